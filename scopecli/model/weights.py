"""Weights every family shares: seeded random initialization and state-dict files from strangers.

Why here and not in a family: `--weights random` and `--weights PATH` mean the same for every family
(torchvision, the demo model, custom factories, timm, open_clip), and a weight file is
always read with `weights_only=True` because it may come from anyone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from scopecli.core.errors import ScopeError

RANDOM_INIT_SEED = 0
RANDOM_LABEL = f"random:{RANDOM_INIT_SEED}"


def is_random(weights: str) -> bool:
    """`random` (or `none`): a seeded random initialization instead of trained weights."""
    return weights.lower() in ("random", "none")


def is_weights_path(weights: str) -> bool:
    """Whether --weights names a file rather than a weights enum name."""
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or os.path.exists(weights)


def file_label(path: str) -> str:
    """How the artifact records weights loaded from a file."""
    return f"file:{Path(path).name}"


def random_init(build):
    """Build a randomly initialized model from a fixed seed, so `random` weights are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def read_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a file (weights_only), unwrapped from the usual checkpoint shapes.

    Accepted: a plain state dict (torch.save, or a .safetensors file), or one under `state_dict` / `model_state_dict` / `model` (training
    checkpoints such as the Places365 `*.pth.tar` files, whose other entries are ignored); a `module.`
    prefix on every key (DataParallel/DDP) is dropped.
    """
    p = Path(path)
    if not p.exists():
        raise ScopeError(f"weights file not found: {path}")
    if p.is_dir():
        raise ScopeError(f"weights path is a directory, not a file: {path}")
    try:
        if p.suffix == ".safetensors":  # the hub's format (timm, open_clip): tensors only, no pickle at all
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except ImportError:
        raise ScopeError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScopeError(f"cannot read weights file {path} as a state dict (weights_only): {first[:200]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScopeError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


# Old torchvision DenseNet names ('denselayer1.norm.1.weight', before torch 0.4), as in the CSAIL Places365
# densenet161 file; torchvision's own loader renames them the same way.
_OLD_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _drop_module_parts(key: str) -> str:
    """'features.module.0.weight' -> 'features.0.weight': a submodule wrapped in DataParallel while training
    (the PyTorch ImageNet example wraps only AlexNet's and VGG's `features`, so the CSAIL Places365 AlexNet
    has these keys)."""
    return ".".join(part for part in key.split(".") if part != "module")


_RENAMES = (_drop_module_parts, lambda key: _OLD_DENSENET.sub(r"\1\2", key))


def match_state_keys(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with the known checkpoint key spellings renamed to the module's, when that makes the
    names match better; anything else is left for the loader to report."""
    own = set(module.state_dict())

    def misses(candidate: dict) -> int:
        return len(own.symmetric_difference(candidate))

    best = state
    for rename in _RENAMES:
        if misses(best) == 0:
            break
        renamed = {rename(k): v for k, v in best.items()}
        if len(renamed) == len(best) and misses(renamed) < misses(best):
            best = renamed
    return best


def classifier_rows(module: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """How many classes the state dict's classifier has, when that differs from the module's, else None.

    The classifier is the module's last layer with a weight matrix (Linear, or a 1x1 conv head): true for
    every torchvision and timm classification model. Only a count that differs in the output rows alone
    (same input width) is returned, so a wrong file is still reported by the loader, not "fixed" here.
    """
    head = None
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if name and isinstance(weight, nn.Parameter) and weight.ndim >= 2:
            head = name
    if head is None:
        return None
    key = f"{head}.weight"
    own = module.state_dict().get(key)
    theirs = state.get(key)
    if own is None or theirs is None or theirs.ndim != own.ndim:
        return None
    if tuple(theirs.shape[1:]) == tuple(own.shape[1:]) and theirs.shape[0] != own.shape[0] and theirs.shape[0] > 0:
        return int(theirs.shape[0])
    return None


def load_state_dict_into(module: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Load a state dict read from `path` into module, strictly; one-line errors for every mismatch."""
    state = match_state_keys(module, state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise ScopeError(f"weights file {path} does not match the model: {'; '.join(parts)}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ScopeError(
            f"weights file {path} does not match the model: {len(bad)} shape mismatch(es), e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def load_state_dict_file(module: nn.Module, path: str) -> None:
    """Load a state-dict file into module (weights_only); one-line errors for every way it can be wrong."""
    load_state_dict_into(module, read_state_dict_file(path), path)


def build_for_state(build, path: str):
    """Build a model (seeded) that fits the state dict at `path`, and load it.

    `build(num_classes)` makes the module (None: the architecture's default). When the file's classifier
    has another class count (a Places365 checkpoint has 365 rows where ImageNet has 1000), the model is
    rebuilt with that count before loading.
    """
    state = read_state_dict_file(path)
    try:  # the names and shapes alone: no memory, no time spent initializing weights the file replaces
        with torch.device("meta"):
            probe = build(None)
    except Exception:  # a builder that reads tensor values while building (e.g. drop-path rates via .item())
        probe = random_init(lambda: build(None))
    classes = classifier_rows(probe, match_state_keys(probe, state))
    module = random_init(lambda: build(classes))
    load_state_dict_into(module, state, path)
    return module
