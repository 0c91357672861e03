"""Batches of decoded model inputs, in order: decoded by threads of this process (the default) or by DataLoader
worker processes.

Why threads: Pillow's decoder and resizer (and libjpeg-turbo under torchvision) release the GIL, so a few
threads decode as fast as as many processes, without the processes' start-up (a fork of a process holding a
model, per pass), their copies through shared memory, or their competition with collect's bookkeeping
threads for the cores of a small machine. Worker processes (`kind="processes"`) remain for datasets whose
decoding holds the GIL (big TIFF stacks through Python code) on machines with many cores.

Either way a batch is the default collate of `dataset[i]` for its indices, in index order, so the kind of loader
never changes what a run computes.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import default_collate

LOADER_KINDS = ("threads", "processes")
PREFETCH = 2  # batches decoded ahead of the one being used


def default_workers() -> int:
    """Decode workers: half the cores (the other half runs the model), at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class ThreadLoader:
    """Iterate over `dataset` in batches of `batch`, decoded by `threads` threads up to PREFETCH batches ahead
    (0 threads: in the calling thread, when each batch is asked for)."""

    def __init__(self, dataset, batch: int, threads: int, pin_memory: bool = False, prefetch: int = PREFETCH,
                 collate=None):
        self.dataset, self.batch, self.threads = dataset, int(batch), int(threads)
        self.pin_memory, self.prefetch = bool(pin_memory), max(1, int(prefetch))
        self.collate = collate

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch)

    def _collate(self, items: list):
        if self.collate is not None:
            return self.collate(items)
        out = default_collate(items)
        if self.pin_memory and torch.cuda.is_available():
            out["image"] = out["image"].pin_memory()
        return out

    def __iter__(self):
        n = len(self.dataset)
        spans = iter(range(i, min(i + self.batch, n)) for i in range(0, n, self.batch))
        if self.threads <= 0:
            for span in spans:
                yield self._collate([self.dataset[i] for i in span])
            return
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="scope-decode")
        pending: deque = deque()

        def submit() -> None:
            span = next(spans, None)
            if span is not None:
                pending.append([pool.submit(self.dataset.__getitem__, i) for i in span])

        try:
            for _ in range(self.prefetch):
                submit()
            while pending:
                futures = pending.popleft()
                submit()
                yield self._collate([f.result() for f in futures])
        finally:  # an abandoned iteration (an error, a break) leaves no thread decoding
            pool.shutdown(wait=True, cancel_futures=True)


def make_loader(dataset, batch: int, workers: int, pin_memory: bool, kind: str = "threads", collate=None):
    """Batches of `dataset` decoded by `workers` threads (`kind="threads"`) or DataLoader worker processes
    (`"processes"`); 0 workers decode in the calling thread. `collate(items)`: instead of the default collate."""
    if kind == "threads":
        return ThreadLoader(dataset, batch, workers, pin_memory=pin_memory, collate=collate)
    if kind != "processes":
        raise ValueError(f"unknown loader kind {kind!r}: one of {', '.join(LOADER_KINDS)}")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
