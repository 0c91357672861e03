"""The `torchvision` family: every torchvision classification model, weights from torch's hub cache."""

from __future__ import annotations

import contextlib
import io
import socket
from pathlib import Path

import torch
import torchvision
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import RANDOM_LABEL, build_for_state, file_label, is_random, is_weights_path, random_init


def torchvision_models() -> list[str]:
    """Every torchvision classification model name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _claim_torchvision(spec: str) -> str | None:
    known = torchvision_models()
    if spec in known:
        return spec
    return {k.lower(): k for k in known}.get(spec.lower())


def _torchvision_preprocess(name: str) -> Preprocess:
    try:
        enum = torchvision.models.get_model_weights(name)
        transforms = enum.DEFAULT.transforms()
    except Exception:
        return Preprocess()
    crop = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
    resize = transforms.resize_size[0] if isinstance(transforms.resize_size, (list, tuple)) else transforms.resize_size
    interp = getattr(transforms.interpolation, "value", "bilinear")
    return Preprocess(tuple(transforms.mean), tuple(transforms.std), int(resize), int(crop), str(interp))


def _torchvision_kwargs(name: str) -> dict:
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": False}
    return {}


def _choose_weights(name: str, weights: str):
    """The weights enum member `weights` names (DEFAULT, a member name, or ENUM.MEMBER)."""
    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:
        raise ScopeError(f"{name} has no pretrained weights in torchvision; use --weights random or --weights PATH") from None
    key = weights.upper()
    if key == "DEFAULT":
        return enum.DEFAULT
    if key.startswith(enum.__name__.upper() + "."):
        key = key.split(".", 1)[1]
    members = {m.name: m for m in enum}
    if key not in members:
        raise ScopeError(
            f"{name} has no weights '{weights}'; choose one of: DEFAULT, {', '.join(members)}, random, or a PATH"
        )
    return members[key]


def _pretrained_state(name: str, chosen, cached: Path) -> dict:
    """The chosen weights' state dict: from torch's hub cache, else one quiet download (15 s timeout)."""
    if cached.exists():
        return torch.load(str(cached), map_location="cpu", weights_only=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints "Downloading ..." itself
            return torch.hub.load_state_dict_from_url(chosen.url, progress=False, map_location="cpu", weights_only=True)
    except Exception:
        raise ScopeError(
            f"pretrained weights for {name} ({chosen.name}) are not cached and could not be downloaded: "
            f"expected {cached}; use --weights PATH or --weights random to work offline"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _torchvision_module(name: str, weights: str) -> tuple[nn.Module, str]:
    kwargs = _torchvision_kwargs(name)
    build = lambda: torchvision.models.get_model(name, weights=None, **kwargs)  # noqa: E731
    if is_random(weights):
        return random_init(build), RANDOM_LABEL
    if is_weights_path(weights):
        # the class count comes from the file: a Places365 checkpoint builds a 365-class model
        def build_with(classes: int | None) -> nn.Module:
            extra = {} if classes is None else {"num_classes": classes}
            return torchvision.models.get_model(name, weights=None, **kwargs, **extra)

        return build_for_state(build_with, weights), file_label(weights)
    chosen = _choose_weights(name, weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / chosen.url.rsplit("/", 1)[-1]
    module = random_init(build)
    state = _pretrained_state(name, chosen, cached)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScopeError(f"cached weights {cached} do not match {name}: {str(exc).splitlines()[0]}") from None
    return module, chosen.name


def _build_torchvision(name: str, weights: str) -> BuiltModule:
    module, label = _torchvision_module(name, weights)
    return BuiltModule(module, name, type(module).__name__, label, class_names=_categories(name))


def _categories(name: str) -> list[str] | None:
    """The output classes of the architecture's default weights (their metadata; nothing is downloaded)."""
    try:
        cats = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")
    except Exception:  # models without a weights enum
        return None
    return [str(c) for c in cats] if cats else None


def _torchvision_rows() -> list[dict]:
    rows = []
    for name in torchvision_models():
        try:
            enum = torchvision.models.get_model_weights(name)
            weights = ", ".join(["DEFAULT"] + [w.name for w in enum] + ["random"])
        except Exception:  # models without a weights enum
            weights = "random"
        rows.append({"name": name, "family": "torchvision", "source": "torchvision", "weights": weights, "available": True})
    return rows


register_family(ModelFamily(
    name="torchvision",
    claim=_claim_torchvision,
    build=_build_torchvision,
    preprocess=_torchvision_preprocess,
    rows=_torchvision_rows,
    names=torchvision_models,
))
