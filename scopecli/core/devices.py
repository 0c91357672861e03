"""One reading of `--device` for every command that runs a model, and the one bf16 autocast they share."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from scopecli.core.errors import ScopeError


def resolve_device(spec: str = "auto") -> torch.device:
    """auto -> cuda when available, else cpu; asking for a device that is not there is a clear error."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScopeError(f"--device {spec}: no CUDA device is available (use --device cpu or auto)")
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise ScopeError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ScopeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ScopeError("--device mps: Apple MPS is not available")
        return torch.device("mps")
    raise ScopeError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")


def host_paths(device: torch.device) -> bool:
    """Does collect's bookkeeping take its host (CPU) paths on `device`: per-unit blocks on a thread pool, the
    compiled loops, units skipped after a host check? Elsewhere (GPUs) it takes batched ops with no host sync.
    One place decides, so a test can run the accelerator paths on a CPU and compare them with the host's."""
    return torch.device(device).type == "cpu"


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on `device` when `amp`, else a no-op context: render and its cost estimate run the same."""
    if not amp:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An image batch as render and its cost estimate feed it: channels-last on a GPU and on a CPU, the
    convolutions' fast path there (2 CPU cores, batch 8, 128 px: x1.43 Lite0 `_blocks.8`, x1.27 resnet50
    `layer3.2`, x1.51 vgg16)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type in ("cuda", "cpu") else x
