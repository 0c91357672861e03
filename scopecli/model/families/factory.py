"""The `custom` family: `package.module:factory`, any callable of the user's that returns an nn.Module."""

from __future__ import annotations

import importlib
import os
import sys

from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import RANDOM_LABEL, file_label, is_random, load_state_dict_file, random_init


def _claim_factory(spec: str) -> str | None:
    # a module path has no '/': `timm/...` and `open_clip/...` specs belong to their families even with a ':'
    return spec if ":" in spec and "/" not in spec.split(":", 1)[0] else None


def _find_factory(spec: str):
    """The callable a `package.module:factory` spec names (the current directory importable)."""
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
    return factory


def _build_factory(spec: str, weights: str) -> BuiltModule:
    factory = _find_factory(spec)
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
    return BuiltModule(module, spec.partition(":")[2].split(".")[-1], type(module).__name__, label)


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
