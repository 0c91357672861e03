"""The `timm` family: `timm/NAME[.TAG]`, any model timm lists ([timm] extra; claimed either way, so a
missing extra is one line naming the pip command). Pretrained weights only from the local cache (hub.py).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families.hub import (claim_prefix, closest, extra_family_names, extra_family_rows, hf_cached_file,
    hf_repo_dir, hub_offline, image_side, import_extra, installed, not_cached, preprocess_from, quiet,
    safe_alternatives)
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import RANDOM_LABEL, build_for_state, file_label, is_random, is_weights_path, random_init

TIMM_PIP = "pip install 'scopecli[timm]'"

# Microscope's models that timm names (Microscope name, timm name, timm's default tag when written)
TIMM_MICROSCOPE = (("InceptionV4", "inception_v4", "tf_in1k"), ("ResNetV2-50", "resnetv2_50", "a1h_in1k"))


def _timm(spec: str = "timm/NAME"):
    return import_extra("timm", spec, "timm")


def _timm_name(timm, spec: str) -> tuple[str, str | None]:
    """'timm/inception_v4' -> ('inception_v4', None); 'timm/inception_v4.tf_in1k' -> (.., 'tf_in1k')."""
    rest = spec.split("/", 1)[1]
    if not rest:
        raise ScopeError("a timm model is named timm/NAME, e.g. timm/inception_v4; timm.list_models() lists the names")
    arch, _, tag = rest.partition(".")
    if not timm.is_model(arch) and timm.is_model(arch.lower()):
        arch = arch.lower()
    if not timm.is_model(arch):
        listing = f"timm.list_models() lists its {len(timm.list_models())} names"
        raise ScopeError(f"unknown timm model '{arch}'" + closest(arch, timm.list_models(), "timm", listing))
    return arch, (tag or None)


def _timm_tags(timm, arch: str) -> list[str]:
    """The pretrained tags timm knows for arch, default first."""
    names = timm.list_pretrained(f"{arch}.*")
    return [n.split(".", 1)[1] for n in names if n.split(".", 1)[0] == arch]


def _timm_default_tag(timm, arch: str) -> str | None:
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:
        cfg = None
    tag = getattr(cfg, "tag", None)
    if tag:
        return tag
    tags = _timm_tags(timm, arch)
    return tags[0] if tags else None


def _timm_choose_tag(timm, arch: str, spec_tag: str | None, weights: str) -> str:
    tags = _timm_tags(timm, arch)
    wanted = None if weights.upper() == "DEFAULT" else weights
    if wanted and wanted.startswith(arch + "."):
        wanted = wanted[len(arch) + 1 :]
    if wanted and spec_tag and wanted != spec_tag:
        raise ScopeError(f"timm/{arch}.{spec_tag} names its weights already; drop the tag or --weights {weights}")
    tag = wanted or spec_tag or _timm_default_tag(timm, arch)
    if not tags or tag is None:
        raise ScopeError(f"timm/{arch} has no pretrained weights in timm; use --weights random or --weights PATH")
    if tag not in tags:
        shown = ", ".join(tags[:8]) + (" …" if len(tags) > 8 else "")
        raise ScopeError(f"timm/{arch} has no weights '{tag}'; choose one of: DEFAULT, {shown}, random, or a PATH")
    return tag


def _timm_cfg_dict(cfg) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return dict(cfg) if isinstance(cfg, dict) else dict(vars(cfg))


def _timm_weights_location(cfg: dict) -> tuple[str | None, str, str]:
    """(the cached weights file or None, which cache, where timm expects it) for a pretrained config,
    looked up the way timm's loader would: a local file, the Hugging Face hub, else a URL in torch's cache."""
    if cfg.get("file"):
        path = str(cfg["file"])
        return (path if os.path.isfile(path) else None), "file", path
    hub_id = cfg.get("hf_hub_id")
    if hub_id and installed("huggingface_hub"):
        repo, _, revision = str(hub_id).partition("@")
        filename = cfg.get("hf_hub_filename") or "pytorch_model.bin"
        files = safe_alternatives(filename, "pytorch_model.bin", "model.safetensors")
        where = f"{hf_repo_dir(repo)} ({' or '.join(files)})"
        return hf_cached_file(repo, files, revision or None), "Hugging Face cache", where
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        return (str(path) if path.is_file() else None), "torch hub cache", str(path)
    return None, "cache", "nowhere (timm has no download location for these weights)"


def _timm_preprocess(timm, model: nn.Module | None = None, cfg: dict | None = None) -> Preprocess:
    """mean, std, input size, resize (from crop_pct, as timm's eval transform) and interpolation."""
    data = None
    try:
        if model is not None and hasattr(timm.data, "resolve_model_data_config"):
            data = timm.data.resolve_model_data_config(model)
        elif model is not None:
            data = timm.data.resolve_data_config({}, model=model)
        elif cfg:
            data = timm.data.resolve_data_config({}, pretrained_cfg=cfg)
    except Exception:
        data = None
    if not data:
        return Preprocess()
    crop = image_side(data.get("input_size", (3, 224, 224)))
    crop_pct = float(data.get("crop_pct") or 0.875)
    resize = max(crop, math.floor(crop / crop_pct))
    return preprocess_from(data.get("mean", (0.485, 0.456, 0.406)), data.get("std", (0.229, 0.224, 0.225)), crop,
                       resize, data.get("interpolation"))


def _build_timm(spec: str, weights: str) -> BuiltModule:
    timm = _timm(spec)
    arch, spec_tag = _timm_name(timm, spec)
    full = f"{arch}.{spec_tag}" if spec_tag else arch
    if spec_tag and spec_tag not in _timm_tags(timm, arch):
        _timm_choose_tag(timm, arch, spec_tag, "DEFAULT")  # raises: the tag is not one of arch's

    def create(name: str, **kwargs) -> nn.Module:
        try:
            with hub_offline(), quiet():
                return timm.create_model(name, **kwargs)
        except ScopeError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ScopeError(f"timm could not build timm/{name}: {type(exc).__name__}: {first[:200]}") from None

    if is_random(weights):
        module, label = random_init(lambda: create(full, pretrained=False)), RANDOM_LABEL
    elif is_weights_path(weights):
        def build(classes: int | None) -> nn.Module:
            return create(full, pretrained=False, **({} if classes is None else {"num_classes": classes}))

        module, label = build_for_state(build, weights), file_label(weights)
    else:
        tag = _timm_choose_tag(timm, arch, spec_tag, weights)
        cfg = _timm_cfg_dict(timm.models.get_pretrained_cfg(f"{arch}.{tag}"))
        cached, cache, where = _timm_weights_location(cfg)
        if cached is None:
            raise not_cached(f"timm/{arch} ({tag})", cache, where)
        module, label = random_init(lambda: create(f"{arch}.{tag}", pretrained=True)), tag
    return BuiltModule(module, arch, type(module).__name__, label, _timm_preprocess(timm, model=module))


def _timm_family_preprocess(spec: str) -> Preprocess:
    timm = _timm(spec)
    arch, tag = _timm_name(timm, spec)
    try:
        cfg = _timm_cfg_dict(timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch))
    except Exception:
        cfg = {}
    return _timm_preprocess(timm, cfg=cfg)


def _timm_rows() -> list[dict]:
    return extra_family_rows("timm", "timm", "timm", "timm", TIMM_PIP, "any of timm.list_models()",
                              "DEFAULT or a tag (local Hugging Face cache only), random, PATH", TIMM_MICROSCOPE)


def _timm_names() -> list[str]:
    return extra_family_names("timm", "timm", TIMM_MICROSCOPE, lambda timm: timm.list_models())


register_family(ModelFamily(
    name="timm",
    claim=lambda spec: claim_prefix(spec, ("timm",), "timm"),
    build=_build_timm,
    preprocess=_timm_family_preprocess,
    rows=_timm_rows,
    names=_timm_names,
))
