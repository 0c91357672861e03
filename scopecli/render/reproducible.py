"""Reproducible GPU renders: the same batch rendered twice on the same GPU gives the same pixels.

On the CPU torch's kernels already do. On CUDA a render step has two sources of run-to-run rounding,
which the optimisation then amplifies into visibly different images (measured on an H100: up to 198/255
between two runs of one batch): cuDNN picks (benchmark) and runs convolution-gradient algorithms that add
in a varying order, and grid_sample's backward adds with atomics. Inside `reproducible(device)` cuDNN and
torch use deterministic algorithms, and `transforms.warp` samples with gathers (same values) whose gradient
torch sums in a fixed order. An op that has no deterministic CUDA kernel warns once and still runs.
Everything is restored on exit."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.utils.deterministic

from scopecli.render import transforms as tf


@contextmanager
def reproducible(device: torch.device, enabled: bool = True):
    """Deterministic kernels for the render steps inside (CUDA only; elsewhere, and when not `enabled`,
    nothing changes)."""
    if not enabled or device.type != "cuda":
        yield
        return
    cudnn, fill = torch.backends.cudnn, torch.utils.deterministic
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark, fill.fill_uninitialized_memory)
    # cuBLAS reduces in a fixed order only with a fixed workspace (read when torch creates its handle)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    fill.fill_uninitialized_memory = False  # a render never reads memory it did not write: skip the NaN fills
    token = tf.REPRODUCIBLE_WARP.set(True)
    try:
        yield
    finally:
        tf.REPRODUCIBLE_WARP.reset(token)
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark, fill.fill_uninitialized_memory = saved[2:]
