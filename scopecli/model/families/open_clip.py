"""The `open_clip` family: `open_clip/NAME`, the visual tower of any model open_clip lists ([clip] extra;
claimed either way). Pretrained weights only from the local cache (hub.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families.hub import (claim_prefix, closest, extra_family_names, extra_family_rows, hf_cached_file,
    hf_repo_dir, hub_offline, image_side, import_extra, installed, not_cached, preprocess_from, quiet,
    safe_alternatives)
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import (RANDOM_LABEL, file_label, is_random, is_weights_path, load_state_dict_into,
    random_init, read_state_dict_file)

CLIP_PIP = "pip install 'scopecli[clip]'"
CLIP_MICROSCOPE = (("CLIP RN50x4", "RN50x4", "openai"),)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip(spec: str = "open_clip/NAME"):
    return import_extra("open_clip", spec, "clip")


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
    raise ScopeError(f"unknown open_clip model '{rest}'" + closest(rest, names, "open_clip", listing))


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
        files = safe_alternatives(filename or HF_WEIGHTS_NAME, HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME)
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
    size = image_side(getattr(visual, "image_size", 224))
    return preprocess_from(merged["mean"], merged["std"], size, size, merged["interpolation"])


def _build_open_clip(spec: str, weights: str) -> BuiltModule:
    oc = _open_clip(spec)
    name = _clip_name(oc, spec)
    tags = list(oc.list_pretrained_tags_by_model(name))

    def create(pretrained: str | None, tag_cfg: dict) -> nn.Module:
        kwargs = {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}  # the tag's activation
        try:
            with hub_offline(), quiet():
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
            raise not_cached(f"open_clip/{name} ({tag})", cache, where)
        visual = random_init(lambda: create(tag, tag_cfg))
        label = tag
    return BuiltModule(visual, name, type(visual).__name__, label, _clip_preprocess(oc, name, visual, tag))


def _clip_family_preprocess(spec: str) -> Preprocess:
    oc = _open_clip(spec)
    name = _clip_name(oc, spec)
    tags = list(oc.list_pretrained_tags_by_model(name))
    cfg = oc.get_pretrained_cfg(name, tags[0]) if tags else {}
    vision = (oc.get_model_config(name) or {}).get("vision_cfg", {})
    size = image_side(vision.get("image_size", 224))
    return preprocess_from(cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD), size, size,
                       cfg.get("interpolation", "bicubic"))


def _clip_rows() -> list[dict]:
    return extra_family_rows("open_clip", "open_clip", "open-clip-torch", "clip", CLIP_PIP,
                              "the visual tower of any of open_clip.list_models()",
                              "DEFAULT (the first tag) or a tag (local cache only), random, PATH", CLIP_MICROSCOPE)


def _clip_names() -> list[str]:
    return extra_family_names("open_clip", "open_clip", CLIP_MICROSCOPE, lambda oc: oc.list_models())


register_family(ModelFamily(
    name="open_clip",
    claim=lambda spec: claim_prefix(spec, ("open_clip", "openclip"), "open_clip", slash="-"),  # ViT-B/32
    build=_build_open_clip,
    preprocess=_clip_family_preprocess,
    rows=_clip_rows,
    names=_clip_names,
))
