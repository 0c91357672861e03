"""Weights every family shares: seeded random initialization and state-dict files from strangers.

Why here and not in a family: `--weights random` and `--weights PATH` mean the same for every family
(torchvision, the demo model, custom factories, and the families still to come), and a weight file is
always read with `weights_only=True` because it may come from anyone.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from scopecli.errors import ScopeError

RANDOM_INIT_SEED = 0
RANDOM_LABEL = f"random:{RANDOM_INIT_SEED}"


def is_random(weights: str) -> bool:
    """`random` (or `none`): a seeded random initialization instead of trained weights."""
    return weights.lower() in ("random", "none")


def is_weights_path(weights: str) -> bool:
    """Whether --weights names a file rather than a weights enum name."""
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin")) or os.path.exists(weights)


def file_label(path: str) -> str:
    """How the artifact records weights loaded from a file."""
    return f"file:{Path(path).name}"


def random_init(build):
    """Build a randomly initialized model from a fixed seed, so `random` weights are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def load_state_dict_file(module: nn.Module, path: str) -> None:
    """Load a state-dict file into module (weights_only); one-line errors for every way it can be wrong."""
    p = Path(path)
    if not p.exists():
        raise ScopeError(f"weights file not found: {path}")
    if p.is_dir():
        raise ScopeError(f"weights path is a directory, not a file: {path}")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
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
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
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
