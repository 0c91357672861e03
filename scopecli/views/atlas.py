"""Activation atlases (Carter et al., Distill 2019): a map of a layer's whole activation space.

Why: feature visualizations of single units show the axes of a layer; an atlas shows what the layer
represents where the data actually is. The layer's activation sample (`collect --sample N`: position
vectors of many images) is laid out in 2-D, with UMAP (umap-learn, an optional extra) or, when that is not
installed, a plain PCA projection (and the atlas says so). The layout is cut into a grid; each non-empty
cell's vectors are averaged, and that mean direction is rendered (render/directions.py), all cells in
batches. The cell grid, counts, means and images are stored as the layer's `atlas` element.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from scopecli.artifact.elements.atlas import MAX_GRID
from scopecli.core.errors import ScopeError
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.core.records import AtlasBlock
from scopecli.core.devices import resolve_device
from scopecli.core.progress import progress
from scopecli.model.layers import layouts_at
from scopecli.model.reopen import model_for_artifact
from scopecli.render.directions import render_directions
from scopecli.render.param import PARAMS

LAYOUTS = ("auto", "umap", "pca")
CLIP = (1.0, 99.0)  # layout coordinates are scaled to [0, 1] between these percentiles (outliers to the edge)


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:  # ImportError, or numba failing to initialise
        return False
    return True


def layout_2d(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str, str]:
    """(coordinates [S, 2] in [0, 1], the method used, a note) for the sample's vectors.

    UMAP: cosine metric, 15 neighbours (fewer for tiny samples), min_dist 0.01, random_state=seed (so a seed
    gives one layout). PCA: the first two principal components (signs fixed), the same for every seed."""
    if method not in LAYOUTS:
        raise ScopeError(f"--layout must be one of {', '.join(LAYOUTS)}, got {method}")
    x = np.asarray(vectors, np.float64)
    note = ""
    use = method
    if method in ("auto", "umap"):
        if umap_available():
            use = "umap"
        elif method == "umap":
            raise ScopeError("--layout umap needs umap-learn: pip install 'scopecli[atlas]' (or umap-learn); "
                             "--layout pca works without it")
        else:
            use = "pca"
            note = "umap-learn is not installed: PCA layout (pip install 'scopecli[atlas]' for UMAP)"
    if use == "umap":
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism is the point
            coords = umap.UMAP(n_components=2, n_neighbors=int(min(15, len(x) - 1)), min_dist=0.01, metric="cosine",
                               random_state=int(seed)).fit_transform(x.astype(np.float32))
    else:
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2]
        axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
        coords = centred @ axes.T
        if coords.shape[1] < 2:
            coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return _unit_square(np.asarray(coords, np.float64)), use, note


def _unit_square(coords: np.ndarray) -> np.ndarray:
    lo = np.percentile(coords, CLIP[0], axis=0)
    hi = np.percentile(coords, CLIP[1], axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((coords - lo) / span, 0.0, 1.0)


def grid_cells(coords: np.ndarray, vectors: np.ndarray, grid: int):
    """(cell [A, 2] (row, col), count [A], center [A, 2], mean [A, C]) of the non-empty cells, row-major.
    Row = the second layout axis (top to bottom), column = the first."""
    col = np.minimum((coords[:, 0] * grid).astype(np.int64), grid - 1)
    row = np.minimum((coords[:, 1] * grid).astype(np.int64), grid - 1)
    flat = row * grid + col
    ids, inverse, count = np.unique(flat, return_inverse=True, return_counts=True)
    mean = np.zeros((len(ids), vectors.shape[1]), np.float64)
    np.add.at(mean, inverse, np.asarray(vectors, np.float64))
    mean /= count[:, None]
    center = np.zeros((len(ids), 2), np.float64)
    np.add.at(center, inverse, coords[:, ::-1])
    center /= count[:, None]
    cell = np.stack([ids // grid, ids % grid], axis=1)
    return cell.astype(np.int32), count.astype(np.int32), center.astype(np.float32), mean.astype(np.float32)


def run_atlas(path, layer: str, grid: int = 20, seed: int = 0, steps: int = 128, size: int = 96,
              layout: str = "auto", power: float = 1.0, lr: float = 0.05, param: str = "fft", batch: int = 32,
              model: str | None = None, weights: str | None = None, loaded=None, device: str = "auto",
              quiet: bool = True) -> dict:
    """`scope atlas`: lay out the layer's sample, grid it, render every non-empty cell, store the atlas."""
    if not 2 <= int(grid) <= MAX_GRID:
        raise ScopeError(f"--grid must be 2..{MAX_GRID}, got {grid}")
    if int(steps) < 1 or int(batch) < 1:
        raise ScopeError("--steps and --batch must be positive")
    if int(size) < 16:
        raise ScopeError(f"--size must be at least 16 pixels, got {size}")
    if param not in PARAMS:
        raise ScopeError(f"unknown --param '{param}': choose one of {', '.join(PARAMS)}")
    if layout not in LAYOUTS:
        raise ScopeError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout}")
    t0 = time.perf_counter()
    with open_artifact(path) as art:
        rec = art.layer(layer)
        sample = art.sample(layer)
        if sample is None or len(sample) == 0:
            raise ScopeError(f"{layer} has no activation sample in {path}: run scope collect MODEL --data DIR "
                             f"--layer {layer} --sample N (e.g. 5000) -o {path} first")
        cells = int(grid) ** 2
        if len(sample) < cells:
            raise ScopeError(f"{layer}: the activation sample holds {len(sample)} vectors, fewer than the {grid}x{grid} "
                             f"= {cells} grid cells; collect a larger --sample or ask for a smaller --grid")
        vectors = sample.vectors
        if not np.isfinite(vectors).all():
            keep = np.isfinite(vectors).all(axis=1)
            vectors = vectors[keep]
        if loaded is None:
            loaded = model_for_artifact(art.model, model, weights)
        elif loaded.fingerprint != art.fingerprint:
            raise ScopeError(f"{path} was written for another model (fingerprint {art.fingerprint[:12]}…)")
    t_layout = time.perf_counter()
    coords, used, note = layout_2d(vectors, layout, seed)
    t_layout = time.perf_counter() - t_layout
    cell, count, center, mean = grid_cells(coords, vectors, int(grid))
    lay = layouts_at(loaded.module, int(size), [layer])[layer]
    t_render = time.perf_counter()
    with progress(len(cell), "atlas", quiet=quiet, unit="cell") as bar:
        renders = render_directions(loaded, layer, lay, mean, [f"{r},{c}" for r, c in cell], size=int(size),
                                    steps=int(steps), lr=lr, power=power, param=param, seed=seed, batch=int(batch),
                                    device=device, progress=bar)
    t_render = time.perf_counter() - t_render
    block = AtlasBlock(grid=int(grid), layout=used, layout_note=note, seed=int(seed), vectors=int(len(vectors)),
                       steps=int(steps), size=int(size), power=float(power), param=param, lr=float(lr), cell=cell,
                       count=count, center=center, mean=mean,
                       act_start=np.array([r.act_start for r in renders]),
                       act_final=np.array([r.act_final for r in renders]), images=[r.image for r in renders])
    params = {"layer": layer, "grid": int(grid), "seed": int(seed), "steps": int(steps), "size": int(size),
              "layout": used, "power": float(power), "param": param, "lr": float(lr), "batch": int(batch)}
    with ArtifactWriter(path, loaded.info(), "atlas", params) as w:
        w.ensure_layer(rec)
        w.put(layer, "atlas", block)
        w.add_timing("atlas_layout_s", t_layout)
        w.add_timing("atlas_render_s", t_render)
    return {"output": str(path), "layer": layer, "grid": int(grid), "layout": used, "note": note,
            "vectors": int(len(vectors)), "cells": int(len(cell)), "layout_s": round(t_layout, 2),
            "render_s": round(t_render, 2), "seconds": round(time.perf_counter() - t0, 2),
            "device": str(resolve_device(device)),
            "improved": int((block.act_final > block.act_start).sum())}
