"""Synthetic artifacts with planted structure for the compare tests (written with the real ArtifactWriter).

Plain functions: an image table whose sha256 are real digests of fake contents, and artifacts whose
probe activations, top/bottom examples and statistics are all derived from one activation matrix
per layer, the way collect derives them from a real model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from scopecli.artifact import ArtifactWriter
from scopecli.core.records import QUANTILES, ExampleSet, ImageTable, LayerRecord, ProbeBlock, RenderRecord, StatsBlock

CLASS_NAMES = ["tench", "golden retriever", "Labrador retriever", "church", "parachute"]


def image_table(n: int, labels: np.ndarray | None = None, prefix: str = "img", content_offset: int = 0) -> ImageTable:
    """n images named prefix0000.jpg…; sha256 of 'image-{i + content_offset}' (same content -> same hash)."""
    labels = np.arange(n) % len(CLASS_NAMES) if labels is None else np.asarray(labels)
    return ImageTable(
        paths=[f"{prefix}{i:04d}.jpg" for i in range(n)],
        sha256=[hashlib.sha256(f"image-{i + content_offset}".encode()).hexdigest() for i in range(n)],
        width=np.full(n, 64, np.int32), height=np.full(n, 48, np.int32),
        label=labels.astype(np.int32), class_names=list(CLASS_NAMES),
    )


def write_artifact(path, layers: dict[str, np.ndarray], table: ImageTable, name: str = "toy",
                   architecture: str = "ToyNet", fingerprint: str | None = None, k: int = 6,
                   probe: bool = True, examples: bool = True, stats: bool = True, renders: bool = False,
                   patches: bool = True) -> None:
    """One artifact; `layers` maps layer name -> activations [n images, units] over the whole table."""
    info = {"spec": name, "name": name, "architecture": architecture, "weights": "synthetic",
            "fingerprint": fingerprint or hashlib.sha256(name.encode()).hexdigest()}
    with ArtifactWriter(path, info, "test", {"k": k}) as w:
        w.set_dataset(table)
        for layer, acts in layers.items():
            acts = np.asarray(acts, np.float32)
            n, u = acts.shape
            w.ensure_layer(LayerRecord(layer, u, (u, 4, 4), 11, 4, -3))
            if probe:
                with np.errstate(over="ignore"):  # tests plant values beyond float16 on purpose
                    half = acts.astype(np.float16)
                w.put_probe(layer, ProbeBlock(np.arange(n, dtype=np.int64), half))
            if examples:
                for which, sign in (("top", -1.0), ("bottom", 1.0)):
                    order = np.argsort(sign * acts, axis=0, kind="stable")[:k].T  # [U, k]
                    score = np.take_along_axis(acts.T, order, axis=1)
                    patch = np.full((8, 8, 3), 128, np.uint8) if patches else None
                    w.put_examples(layer, which, ExampleSet(
                        units=np.arange(u, dtype=np.int64), score=score.astype(np.float32),
                        image_index=order.astype(np.int64), loc=np.zeros((u, k, 2), np.int32),
                        box=np.tile(np.array([0, 0, 8, 8], np.int32), (u, k, 1)),
                        patches=[[patch for _ in range(k)] for _ in range(u)],
                    ))
            if stats:
                w.put_stats(layer, StatsBlock(
                    units=np.arange(u, dtype=np.int64), count=np.full(u, n, np.int64),
                    mean=acts.mean(0).astype(np.float64), std=acts.std(0).astype(np.float64),
                    min=acts.min(0).astype(np.float64), max=acts.max(0).astype(np.float64),
                    frac_pos=(acts > 0).mean(0).astype(np.float64),
                    quantiles=np.quantile(acts, QUANTILES, axis=0).T.astype(np.float64),
                ))
            if renders:
                img = np.zeros((16, 16, 3), np.uint8)
                img[..., 0] = 200
                w.put_renders(layer, [RenderRecord(
                    unit=j, objective="channel", diversity_index=0, image=img, seed=j, steps=8, size=16,
                    param="fft", lr=0.05, act_final=float(acts[:, j].max() * 1.5), act_robust=1.0,
                    act_trace=np.zeros(1, np.float32), time_s=0.1,
                    dataset_max_ratio=1.5) for j in range(min(u, 2))])


def diffable_pair(folder, n: int = 120, noise: float = 0.2, seed: int = 0) -> tuple:
    """Two small artifacts ("modelA", "modelB") of n shared images whose layers l1/l2 are alike up to `noise`:
    enough probe images for `run_diff` (which needs 100 shared). Returns their paths."""
    rng = np.random.default_rng(seed)
    table = image_table(n)
    acts = {"l1": rng.normal(size=(n, 6)), "l2": rng.normal(size=(n, 5))}
    a, b = folder / "a.h5", folder / "b.h5"
    write_artifact(a, acts, table, name="modelA")
    write_artifact(b, {k: v + noise * rng.normal(size=v.shape) for k, v in acts.items()}, table, name="modelB")
    return a, b
