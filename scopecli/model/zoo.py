"""Families from the libraries researchers already use: `timm/NAME` (timm) and `open_clip/NAME` (the
visual tower of an open_clip model). Together with torchvision they name every model Microscope studied.

Both libraries are optional extras (`pip install 'scopecli[timm]'`, `'scopecli[clip]'`); the specs are
claimed either way, so a missing extra is one line naming the pip command.

Why scope never downloads here: a render or collect run must not depend on a network that clusters often
do not have, nor fetch files nobody asked for. Pretrained weights come only from the library's local cache
(the Hugging Face hub cache, with the hub switched offline for the call); when they are not there, one
line names the folder the library expects and how to work offline (`--weights random` or a PATH).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import (
    RANDOM_LABEL,
    build_for_state,
    file_label,
    is_random,
    is_weights_path,
    load_state_dict_into,
    random_init,
    read_state_dict_file,
)

OFFLINE_HINT = "use --weights random or --weights PATH to work offline"
TIMM_PIP = "pip install 'scopecli[timm]'"
CLIP_PIP = "pip install 'scopecli[clip]'"

# torchvision.transforms.InterpolationMode names that Preprocess understands
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


# ---------------------------------------------------------------- shared: extras, offline hub, cache paths


def installed(module: str) -> bool:
    """Whether an optional library is importable, without importing it (`scope models` stays fast)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import_extra(module: str, spec: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScopeError(f"{spec} needs the [{extra}] extra: pip install 'scopecli[{extra}]'") from None
    except Exception as exc:  # installed but broken
        raise ScopeError(f"cannot import {module}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


@contextlib.contextmanager
def hub_offline():
    """The Hugging Face hub offline for the duration (the environment variable, and the flag that
    huggingface_hub read from it at import); both restored after."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except Exception:
        constants = None
    old_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag


@contextlib.contextmanager
def _quiet():
    """The libraries' own warnings and log lines stay off stderr while a model is built: scope reports
    what went wrong in one line. (A NullHandler on the root logger also keeps a library's module-level
    `logging.warning` from installing a stderr handler for the rest of the run.)"""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    previous = root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        root.removeHandler(handler)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub computes it ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...)."""
    from huggingface_hub import constants

    return Path(getattr(constants, "HF_HUB_CACHE", None) or constants.HUGGINGFACE_HUB_CACHE)


def hf_repo_dir(repo_id: str) -> Path:
    """Where the hub cache keeps a model repository (models--ORG--NAME)."""
    try:
        from huggingface_hub.file_download import repo_folder_name

        folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    except Exception:
        folder = "models--" + repo_id.replace("/", "--")
    return hf_cache_dir() / folder


def hf_cached_file(repo_id: str, filenames: list[str], revision: str | None = None) -> str | None:
    """The first of filenames that the hub cache holds for repo_id (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _safe_alternatives(filename: str, default_bin: str, default_safe: str) -> list[str]:
    """The files a library tries for one hub entry, in its order: the safetensors twin first."""
    if filename.endswith(".safetensors"):
        return [filename]
    if filename == default_bin:
        return [default_safe, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _not_cached(what: str, cache: str, where: str) -> ScopeError:
    return ScopeError(
        f"pretrained weights for {what} are not in the local {cache} and scope does not download: "
        f"expected {where}; {OFFLINE_HINT}"
    )


def _closest(name: str, names: list[str], prefix: str, listing: str) -> str:
    """'; did you mean PREFIX/a, PREFIX/b?' (compared without the prefix), else '; ' + listing."""
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.6)
    if close:
        return "; did you mean " + ", ".join(f"{prefix}/{lowered[c]}" for c in close) + "?"
    return f"; {listing}"


def _preprocess(mean, std, crop, resize, interpolation) -> Preprocess:
    interp = str(interpolation or "bilinear").lower()
    return Preprocess(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        resize=int(resize),
        crop=int(crop),
        interpolation=interp if interp in _INTERPOLATIONS else "bilinear",
    )


def _side(size) -> int:
    """An image size given as N, (H, W) or (C, H, W): its height."""
    if isinstance(size, (list, tuple)):
        return int(size[-2] if len(size) >= 2 else size[0])
    return int(size)


def _claim_prefix(spec: str, prefixes: tuple[str, ...], canonical: str, slash: str = "/") -> str | None:
    """`PREFIX/NAME` -> `canonical/NAME` (any further '/' in NAME becomes `slash`), else None."""
    head, sep, rest = spec.partition("/")
    if sep and head.lower().replace("-", "_") in prefixes:
        return f"{canonical}/{rest.strip().replace('/', slash)}"
    return None


def _extra_family_rows(family: str, module: str, distribution: str, extra: str, pip: str,
                       listing: str, any_weights: str, microscope_models) -> list[dict]:
    """`scope models` rows of a family that lives in an optional extra: one row for any of its models
    (`listing` says where their names come from), then one per Microscope model it carries, so the
    table shows the Microscope names whether or not the extra is installed."""
    ok = installed(module)
    source = (f"{module} {_version(distribution)} ([{extra}] extra)" if ok
              else f"{module} ([{extra}] extra, not installed: {pip})")
    rows = [{
        "name": f"{family}/<name>",
        "family": family,
        "source": f"{source}: {listing}",
        "weights": any_weights,
        "available": ok,
    }]
    for microscope, name, tag in microscope_models:
        rows.append({
            "name": f"{family}/{name}",
            "family": family,
            "source": f"{source}: Microscope's {microscope}",
            "weights": f"DEFAULT ({tag}), random, PATH",
            "available": ok,
        })
    return rows


def _extra_family_names(family: str, module: str, microscope_models, list_models) -> list[str]:
    """Every `family/NAME` the extra's library lists (`list_models(library)`), for name completion and
    'did you mean'; only the Microscope models when the extra is missing, none when it fails to import."""
    if not installed(module):
        return [f"{family}/{name}" for _, name, _ in microscope_models]
    try:
        with _quiet():
            library = importlib.import_module(module)
        return [f"{family}/{name}" for name in list_models(library)]
    except Exception:
        return []


# ---------------------------------------------------------------- timm ([timm] extra)

# Microscope's models that timm names (Microscope name, timm name, timm's default tag when written)
TIMM_MICROSCOPE = (("InceptionV4", "inception_v4", "tf_in1k"), ("ResNetV2-50", "resnetv2_50", "a1h_in1k"))


def _timm(spec: str = "timm/NAME"):
    return _import_extra("timm", spec, "timm")


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
        raise ScopeError(f"unknown timm model '{arch}'" + _closest(arch, timm.list_models(), "timm", listing))
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
        files = _safe_alternatives(filename, "pytorch_model.bin", "model.safetensors")
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
    crop = _side(data.get("input_size", (3, 224, 224)))
    crop_pct = float(data.get("crop_pct") or 0.875)
    resize = max(crop, math.floor(crop / crop_pct))
    return _preprocess(data.get("mean", (0.485, 0.456, 0.406)), data.get("std", (0.229, 0.224, 0.225)), crop,
                       resize, data.get("interpolation"))


def _build_timm(spec: str, weights: str) -> BuiltModule:
    timm = _timm(spec)
    arch, spec_tag = _timm_name(timm, spec)
    full = f"{arch}.{spec_tag}" if spec_tag else arch
    if spec_tag and spec_tag not in _timm_tags(timm, arch):
        _timm_choose_tag(timm, arch, spec_tag, "DEFAULT")  # raises: the tag is not one of arch's

    def create(name: str, **kwargs) -> nn.Module:
        try:
            with hub_offline(), _quiet():
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
            raise _not_cached(f"timm/{arch} ({tag})", cache, where)
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
    return _extra_family_rows("timm", "timm", "timm", "timm", TIMM_PIP, "any of timm.list_models()",
                              "DEFAULT or a tag (local Hugging Face cache only), random, PATH", TIMM_MICROSCOPE)


def _timm_names() -> list[str]:
    return _extra_family_names("timm", "timm", TIMM_MICROSCOPE, lambda timm: timm.list_models())


register_family(ModelFamily(
    name="timm",
    claim=lambda spec: _claim_prefix(spec, ("timm",), "timm"),
    build=_build_timm,
    preprocess=_timm_family_preprocess,
    rows=_timm_rows,
    names=_timm_names,
))


# ---------------------------------------------------------------- open_clip ([clip] extra)

CLIP_MICROSCOPE = (("CLIP RN50x4", "RN50x4", "openai"),)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip(spec: str = "open_clip/NAME"):
    return _import_extra("open_clip", spec, "clip")


def _clip_name(oc, spec: str) -> str:
    """'open_clip/RN50x4' -> 'RN50x4' (case-insensitive; 'ViT-B/32' is 'ViT-B-32', as open_clip spells it)."""
    rest = spec.split("/", 1)[1].replace("/", "-")
    if not rest:
        raise ScopeError("an open_clip model is named open_clip/NAME, e.g. open_clip/RN50x4; open_clip.list_models() lists the names")
    names = list(oc.list_models())
    if rest in names:
        return rest
    lowered = {n.lower(): n for n in names}
    if rest.lower() in lowered:
        return lowered[rest.lower()]
    listing = f"open_clip.list_models() lists its {len(names)} names"
    raise ScopeError(f"unknown open_clip model '{rest}'" + _closest(rest, names, "open_clip", listing))


def _clip_choose_tag(oc, name: str, weights: str) -> str:
    tags = list(oc.list_pretrained_tags_by_model(name))
    if not tags:
        raise ScopeError(f"open_clip/{name} has no pretrained tags in open_clip; use --weights random or --weights PATH")
    if weights.upper() == "DEFAULT":
        return tags[0]
    wanted = weights.lower().replace("-", "_")  # open_clip's own tag spelling
    for tag in tags:
        if tag.lower().replace("-", "_") == wanted:
            return tag
    shown = ", ".join(tags[:8]) + (" …" if len(tags) > 8 else "")
    raise ScopeError(f"open_clip/{name} has no weights '{weights}'; choose one of: DEFAULT, {shown}, random, or a PATH")


def _clip_weights_location(oc, cfg: dict) -> tuple[str | None, str, str]:
    """(the cached checkpoint or None, which cache, where open_clip expects it) for a pretrained config,
    looked up as open_clip's download_pretrained would: a file, the Hugging Face hub, else its URL cache."""
    if cfg.get("file"):
        path = str(cfg["file"])
        return (path if os.path.isfile(path) else None), "file", path
    hub = cfg.get("hf_hub", "")
    if hub and installed("huggingface_hub"):
        repo, filename = os.path.split(hub)  # 'org/repo/' (the default file) or 'org/repo/file.bin'
        try:
            from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        except ImportError:
            HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"
        files = _safe_alternatives(filename or HF_WEIGHTS_NAME, HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME)
        where = f"{hf_repo_dir(repo)} ({' or '.join(files)})"
        return hf_cached_file(repo, files), "Hugging Face cache", where
    url = cfg.get("url", "")
    if url:
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
        return (str(path) if path.is_file() else None), "open_clip cache", str(path)
    return None, "cache", "nowhere (open_clip has no download location for these weights)"


def _clip_preprocess(oc, name: str, visual: nn.Module, tag: str | None) -> Preprocess:
    """The tag's mean/std/interpolation (else the tower's own config, else OpenAI's); resize = crop = the
    tower's image size (CLIP resizes the shortest side to the crop size)."""
    merged = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic"}
    merged.update({k: v for k, v in (getattr(visual, "preprocess_cfg", None) or {}).items() if k in merged and v})
    if tag:
        merged.update({k: v for k, v in oc.get_pretrained_cfg(name, tag).items() if k in merged and v})
    size = _side(getattr(visual, "image_size", 224))
    return _preprocess(merged["mean"], merged["std"], size, size, merged["interpolation"])


def _build_open_clip(spec: str, weights: str) -> BuiltModule:
    oc = _open_clip(spec)
    name = _clip_name(oc, spec)
    tags = list(oc.list_pretrained_tags_by_model(name))

    def create(pretrained: str | None, tag_cfg: dict) -> nn.Module:
        kwargs = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}  # the tag's activation
        try:
            with hub_offline(), _quiet():
                # pretrained_hf=False: no text-tower base weights either (open_clip 3 reads it as pretrained_text)
                model = oc.create_model(name, pretrained=pretrained, pretrained_hf=False, **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            what = f"open_clip/{name}" + (f" ({pretrained})" if pretrained else "")
            raise ScopeError(f"open_clip could not build {what} offline: {type(exc).__name__}: {first[:200]}") from None
        visual = getattr(model, "visual", None)
        if not isinstance(visual, nn.Module):
            raise ScopeError(f"open_clip/{name} has no visual tower (model.visual)")
        return visual

    if is_random(weights) or is_weights_path(weights):
        tag = tags[0] if tags else None
        tag_cfg = oc.get_pretrained_cfg(name, tag) if tag else {}
        visual = random_init(lambda: create(None, tag_cfg))
        label = RANDOM_LABEL
        if is_weights_path(weights):
            state = read_state_dict_file(weights)
            if any(k.startswith("visual.") for k in state):  # a whole CLIP model's state dict: its visual tower
                state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
            load_state_dict_into(visual, state, weights)
            label = file_label(weights)
    else:
        tag = _clip_choose_tag(oc, name, weights)
        tag_cfg = oc.get_pretrained_cfg(name, tag)
        cached, cache, where = _clip_weights_location(oc, tag_cfg)
        if cached is None:
            raise _not_cached(f"open_clip/{name} ({tag})", cache, where)
        visual = random_init(lambda: create(tag, tag_cfg))
        label = tag
    return BuiltModule(visual, name, type(visual).__name__, label, _clip_preprocess(oc, name, visual, tag))


def _clip_family_preprocess(spec: str) -> Preprocess:
    oc = _open_clip(spec)
    name = _clip_name(oc, spec)
    tags = list(oc.list_pretrained_tags_by_model(name))
    cfg = oc.get_pretrained_cfg(name, tags[0]) if tags else {}
    vision = (oc.get_model_config(name) or {}).get("vision_cfg", {})
    size = _side(vision.get("image_size", 224))
    return _preprocess(cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD), size, size,
                       cfg.get("interpolation", "bicubic"))


def _clip_rows() -> list[dict]:
    return _extra_family_rows("open_clip", "open_clip", "open-clip-torch", "clip", CLIP_PIP,
                              "the visual tower of any of open_clip.list_models()",
                              "DEFAULT (the first tag) or a tag (local cache only), random, PATH", CLIP_MICROSCOPE)


def _clip_names() -> list[str]:
    return _extra_family_names("open_clip", "open_clip", CLIP_MICROSCOPE, lambda oc: oc.list_models())


register_family(ModelFamily(
    name="open_clip",
    claim=lambda spec: _claim_prefix(spec, ("open_clip", "openclip"), "open_clip", slash="-"),  # ViT-B/32
    build=_build_open_clip,
    preprocess=_clip_family_preprocess,
    rows=_clip_rows,
    names=_clip_names,
))
