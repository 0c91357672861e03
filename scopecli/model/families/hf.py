"""The `hf` family: `hf/ORG/NAME`, a vision model of Hugging Face `transformers` ([hf] extra; claimed either
way, so a missing extra is one line naming the pip command). Weights and configs only from the local hub
cache (hub.py): scope reads the cached snapshot folder itself and hands transformers that folder, with the
hub offline and `local_files_only=True`, so nothing is ever downloaded.

Which model: a checkpoint whose config has a classification head (`architectures` ending in
ForImageClassification, or a real `id2label` map) is built with AutoModelForImageClassification (output:
the logits); CLIP / SigLIP checkpoints give their vision tower (output: the pooled embedding); anything
else AutoModel (output: the pooled output, else the last hidden state).

Why the wrapper shares the model's children instead of holding the model as a child: scope's layer names
are PyTorch's dotted module names, and users should see the names transformers and its docs use
(`vit.encoder.layer.3`, `encoder.stages.2`), so `HFVision` exposes the model's own submodules, parameters
and buffers at its top level (its state dict is the checkpoint's), while its forward calls the model with
`pixel_values=x` and returns one tensor.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import torch
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families.hub import (extra_family_rows, hf_cache_dir, hf_cached_file, hf_repo_dir, hub_offline,
    image_side, import_extra, installed, not_cached, preprocess_from, quiet)
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from scopecli.model.weights import RANDOM_LABEL, file_label, is_random, is_weights_path, load_state_dict_into, \
    random_init, read_state_dict_file

HF_PIP = "pip install 'scopecli[hf]'"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _transformers(spec: str = "hf/ORG/NAME"):
    return import_extra("transformers", spec, "hf")


def _claim(spec: str) -> str | None:
    head, sep, rest = spec.partition("/")
    if sep and head.lower() in ("hf", "huggingface", "transformers"):
        return f"hf/{rest.strip()}"
    return None


def _repo_id(spec: str) -> str:
    repo = spec.split("/", 1)[1]
    if not _NAME.match(repo) or "--" in repo or ".." in repo:
        raise ScopeError(f"a Hugging Face model is named hf/ORG/NAME (e.g. hf/google/vit-base-patch16-224), "
                         f"got '{spec}'")
    return repo


def _first(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:200]


# ---------------------------------------------------------------- the cache


def _snapshot(repo: str) -> Path:
    """The cached snapshot folder of repo (refs/main), found through its config.json; one line when absent."""
    config = hf_cached_file(repo, ["config.json"])
    if config is None:
        raise ScopeError(f"hf/{repo} is not in the local Hugging Face cache and scope does not download: expected "
                         f"{hf_repo_dir(repo)} (config.json); fetch it where there is a network (e.g. `hf download "
                         f"{repo}`) and set HF_HUB_CACHE, or use --weights PATH")
    return Path(config).parent


def _config_dict(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except Exception as exc:
        raise ScopeError(f"cannot read {folder / 'config.json'}: {_first(exc)}") from None


def _real_labels(id2label) -> list[str] | None:
    """The class names of a real label map (not transformers' default LABEL_0, LABEL_1)."""
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        items = sorted((int(k), str(v)) for k, v in id2label.items())
    except (TypeError, ValueError):
        return None
    if [i for i, _ in items] != list(range(len(items))):
        return None
    names = [v for _, v in items]
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def _kind(cfg: dict) -> str:
    """'tower' (CLIP/SigLIP vision tower), 'classifier' or 'base'."""
    if cfg.get("model_type") in _TOWERS:
        return "tower"
    if any(str(a).endswith("ForImageClassification") for a in cfg.get("architectures") or []):
        return "classifier"
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and len(id2label) > 2 and _real_labels(id2label):
        return "classifier"
    return "base"


# ---------------------------------------------------------------- the module scope sees


class HFVision(nn.Module):
    """A transformers vision model as `pixels -> one tensor`, exposing the model's own submodules under their
    own names (the model itself is not a child: `scope layers` shows `vit.encoder.layer.3`)."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        object.__setattr__(self, "hf_model", model)  # not registered: its children are ours
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.output = output  # 'logits', 'pooled' (pooler_output, else last_hidden_state)
        params = inspect.signature(model.forward).parameters
        self._extra = {"return_dict": True} if "return_dict" in params else {}
        if "interpolate_pos_encoding" in params:  # --input-size other than the checkpoint's
            self._extra["interpolate_pos_encoding"] = True

    def train(self, mode: bool = True):
        super().train(mode)
        self.hf_model.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.hf_model(pixel_values=x, **self._extra)
        if self.output == "logits":
            return out.logits
        pooled = getattr(out, "pooler_output", None)
        if isinstance(pooled, torch.Tensor):
            return pooled
        hidden = getattr(out, "last_hidden_state", None)
        if isinstance(hidden, torch.Tensor):
            return hidden
        return out[0]

    def extra_repr(self) -> str:
        return f"{type(self.hf_model).__name__}, output={self.output}"


def _model_class(transformers, kind: str, cfg: dict):
    if kind == "tower":
        return getattr(transformers, _TOWERS[cfg["model_type"]])
    return transformers.AutoModelForImageClassification if kind == "classifier" else transformers.AutoModel


def _build_hf(spec: str, weights: str) -> BuiltModule:
    repo = _repo_id(spec)
    transformers = _transformers(spec)
    folder = _snapshot(repo)
    cfg = _config_dict(folder)
    kind = _kind(cfg)
    cls = _model_class(transformers, kind, cfg)

    def run(what: str, make):
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars on stderr
        try:
            with hub_offline(), quiet():
                return make()
        except ScopeError:
            raise
        except Exception as exc:
            raise ScopeError(f"transformers could not {what} hf/{repo}: {type(exc).__name__}: {_first(exc)}") from None
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()

    def from_config() -> nn.Module:
        config = run("read the config of", lambda: transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True))
        if kind == "tower":  # the vision tower's own config
            return run("build", lambda: random_init(lambda: cls(config.vision_config)))
        return run("build", lambda: random_init(lambda: cls.from_config(config)))

    if is_random(weights) or is_weights_path(weights):
        model = from_config()
        label = RANDOM_LABEL
        if is_weights_path(weights):
            state = read_state_dict_file(weights)
            own = set(model.state_dict())
            if kind == "tower" and not own <= set(state):  # a whole CLIP state dict: its vision tower
                tower = {k: v for k, v in state.items() if k.startswith("vision_model.")}
                bare = {k[len("vision_model."):]: v for k, v in tower.items()}
                state = bare if len(own & set(bare)) > len(own & set(tower)) else tower
            load_state_dict_into(model, state, weights)
            label = file_label(weights)
    elif weights.upper() in ("DEFAULT", "MAIN"):
        if not any((folder / f).is_file() for f in _WEIGHT_FILES):
            raise not_cached(f"hf/{repo}", "Hugging Face cache", f"{folder} ({' or '.join(_WEIGHT_FILES[::2])})")
        model = run("load", lambda: random_init(lambda: cls.from_pretrained(str(folder), local_files_only=True)))
        label = "DEFAULT"
    else:
        raise ScopeError(f"hf/{repo} has one set of weights: --weights DEFAULT (the cached snapshot), random, or a PATH")
    model.eval()
    module = HFVision(model, "logits" if kind == "classifier" else "pooled")
    classes = _real_labels(getattr(model.config, "id2label", None)) if kind == "classifier" else None
    return BuiltModule(module, repo.split("/")[-1], type(model).__name__, label, _preprocess(folder, cfg), classes)


# ---------------------------------------------------------------- preprocessing


def _side(size) -> int | None:
    if isinstance(size, dict):
        for key in ("shortest_edge", "height", "width"):
            if size.get(key):
                return int(size[key])
        return None
    if size is None:
        return None
    return image_side(size)


def _preprocess(folder: Path, cfg: dict) -> Preprocess:
    """From the snapshot's preprocessor_config.json (mean, std, size / crop_size, crop_pct, resample), else
    ImageNet defaults at the config's image size."""
    vision = cfg.get("vision_config") if isinstance(cfg.get("vision_config"), dict) else cfg
    native = image_side(vision.get("image_size") or 224)
    try:
        pp = json.loads((folder / "preprocessor_config.json").read_text())
    except Exception:
        pp = None
    if not isinstance(pp, dict):
        return preprocess_from(IMAGENET_MEAN, IMAGENET_STD, native, max(native, round(native * 256 / 224)), "bilinear")
    size = _side(pp.get("size")) or native
    crop = _side(pp.get("crop_size")) if pp.get("do_center_crop", "crop_size" in pp) else None
    if crop is None:
        crop = size
        if pp.get("crop_pct") and isinstance(pp.get("size"), dict) and "shortest_edge" in pp["size"] and size < 384:
            size = int(size / float(pp["crop_pct"]))  # ConvNeXt: resize to crop / crop_pct, then center crop
    resample = pp.get("resample")
    interp = _RESAMPLE.get(resample, resample if isinstance(resample, str) else "bilinear")
    return preprocess_from(pp.get("image_mean") or IMAGENET_MEAN, pp.get("image_std") or IMAGENET_STD, crop,
                           max(size, crop), interp)


def _family_preprocess(spec: str) -> Preprocess:
    repo = _repo_id(spec)
    folder = _snapshot(repo)
    return _preprocess(folder, _config_dict(folder))


# ---------------------------------------------------------------- `scope models`


def _cached_repos() -> list[str]:
    """ORG/NAME of every model the local hub cache holds a config.json for."""
    try:
        cache = hf_cache_dir()
        found = []
        for folder in sorted(cache.glob("models--*--*")):
            repo = folder.name[len("models--"):].replace("--", "/")
            if "/" in repo and list(folder.glob("snapshots/*/config.json")):
                found.append(repo)
        return found
    except Exception:
        return []


def _rows() -> list[dict]:
    rows = extra_family_rows("hf", "transformers", "transformers", "hf", HF_PIP,
                             "any vision model (ORG/NAME) in the local Hugging Face cache",
                             "DEFAULT (the cached snapshot), random (its config), PATH", ())
    ok = installed("transformers")
    for repo in _cached_repos() if installed("huggingface_hub") else []:
        rows.append({"name": f"hf/{repo}", "family": "hf", "source": f"Hugging Face cache: {hf_repo_dir(repo)}",
                     "weights": "DEFAULT, random, PATH", "available": ok})
    return rows


def _names() -> list[str]:
    return [f"hf/{repo}" for repo in _cached_repos()] if installed("huggingface_hub") else []


register_family(ModelFamily(
    name="hf",
    claim=_claim,
    build=_build_hf,
    preprocess=_family_preprocess,
    rows=_rows,
    names=_names,
))
