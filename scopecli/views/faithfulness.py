"""Faithfulness evidence for renders: does a feature visualization drive its unit through the same path as
photos do? (Geirhos et al. 2023, "Don't trust your eyes: on the (un)reliability of feature
visualizations": an optimized picture can reach a unit's maximum through a path natural images never use.)

For a render of unit u of layer L, at the grid position p* of u's maximum in the render, and for L and every
earlier layer L' (the artifact's layers and the model's default layers): the channel vector of L' at the
position corresponding to p* (through the receptive fields) is compared with the mean vector of u's top-k dataset examples at the positions
corresponding to their stored maxima, by Spearman rank correlation. The mean over the layers is the render's
path similarity; the same figure against the examples of a random other unit v of L is its baseline, and a
render at or below its baseline is flagged ("this picture may not show how the unit responds to photos").
Stored as the `faithfulness` element (`scopecli/artifact/elements/faithfulness.py`).

Position mapping: input centre c = rf_start_L + p*·rf_stride_L + (rf_size_L - 1)/2 in each axis, then
p' = round((c - rf_start_L' - (rf_size_L' - 1)/2) / rf_stride_L') (halves up), clipped to the grid of L';
vector layers (grid 1x1) use position 0.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.elements.faithfulness import FaithfulnessBlock, PathEvidence, png_sha256
from scopecli.core.devices import resolve_device
from scopecli.core.errors import ScopeError
from scopecli.core.progress import progress as progress_bar
from scopecli.core.records import LayerRecord
from scopecli.model import adapter
from scopecli.model.capture import LayerTap
from scopecli.model.layers import get_module, layer_table
from scopecli.model.reopen import model_for_artifact
from scopecli.views.circuits import _image_loader

BATCH = 32  # images per forward
CHUNK = 256  # images decoded at once
OBJECTIVES = ("channel", "neuron")  # render objectives whose picture targets one unit at its best position
SUMS_BUDGET = 512 << 20  # bytes of example sums held at once; more target layers take more passes


# ---------------------------------------------------------------------------------------------- small parts

def map_position(p: tuple[int, int], src: LayerRecord, dst: LayerRecord) -> tuple[int, int]:
    """The grid position of `dst` whose receptive field is centred where that of `p` in `src` is (clipped to
    the grid; (0, 0) for a vector layer)."""
    lay = dst.effective_layout
    rows, cols = (int(x) for x in lay.grid)
    if lay.kind == "vector" or (rows, cols) == (1, 1):
        return (0, 0)
    out = []
    for v, n in zip(p, (rows, cols)):
        c = src.rf_start + int(v) * src.rf_stride + (src.rf_size - 1) / 2
        q = math.floor((c - dst.rf_start - (dst.rf_size - 1) / 2) / max(dst.rf_stride, 1) + 0.5)
        out.append(min(max(int(q), 0), n - 1))
    return out[0], out[1]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho over the entries finite in both; NaN with fewer than 2 or a constant side."""
    a, b = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return math.nan
    a, b = a[ok], b[ok]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = float(spearmanr(a, b)[0])
    return float(np.clip(r, -1.0, 1.0)) if math.isfinite(r) else math.nan


def _mean(values) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    return float(v.mean()) if v.size else math.nan


def baseline_unit(layer: str, unit: int, seed: int, candidates: list[int]) -> int:
    """The other unit whose examples give `unit`'s baseline: drawn from `candidates` (units of the layer with
    top examples) without `unit`, by a generator seeded with blake2b(seed, layer, unit); -1 when none."""
    pool = [int(v) for v in candidates if int(v) != int(unit)]
    if not pool:
        return -1
    key = hashlib.blake2b(f"scope-faithfulness\0{int(seed)}\0{layer}\0{int(unit)}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(key, "little"))
    return pool[int(rng.integers(len(pool)))]


def forward_order(module, names: list[str], channels: int, size: int, device) -> list[str]:
    """`names` in the order their modules first run in one forward of a blank input."""
    seen: list[str] = []
    handles = []
    for n in names:
        handles.append(get_module(module, n).register_forward_hook(
            lambda _m, _i, _o, n=n: seen.append(n) if n not in seen else None))
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    return seen + [n for n in names if n not in seen]  # modules that never ran: last (measured nowhere earlier)


def _space_layer(art, name: str) -> bool:
    return "@" in name or art.element_group(name, "space") is not None


def plan_layers(art, layers=None) -> list[str]:
    """The layers to measure: the named ones, or every real layer of the artifact with renders and top
    examples. Unit-space (direction) layers `L@S` are refused when named and left out otherwise."""
    if not layers:
        out = [n for n in art.layers if not _space_layer(art, n) and art.section(n, "renders") is not None
               and art.examples(n, "top") is not None]
        if not out:
            raise ScopeError(f"{os.path.basename(art.path)} has no layer with both renders and dataset examples: run "
                             "scope render and scope collect on a layer first")
        return out
    out = []
    for n in layers:
        if n not in art.layers:
            art.layer(n)  # the usual "not in the file" error with suggestions
        if _space_layer(art, n):
            raise ScopeError(f"{n} is a unit space: faithfulness is measured on the model's own layers only")
        if art.section(n, "renders") is None:
            raise ScopeError(f"{n} has no renders in {os.path.basename(art.path)}: run scope render on it first")
        if art.examples(n, "top") is None:
            raise ScopeError(f"{n} has no dataset examples in {os.path.basename(art.path)}: run scope collect on it "
                             "first")
        out.append(n)
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------- the job

@dataclass
class _Row:
    """One render row to measure."""

    index: int  # row of the layer's render table
    unit: int
    objective: str
    diversity_index: int
    sha: str = ""
    vectors: dict = field(default_factory=dict)  # L' -> float32 [C'] at the position of p* (empty: skipped)


@dataclass
class _Target:
    """One layer L: its render rows, the layers measured (L and the earlier ones), and the units whose
    example means are needed (the rendered units and their baseline units)."""

    layer: str
    measured: list[str]
    rows: list[_Row]
    examples: dict  # unit -> [(image row, (y, x))] of its top-k examples
    baseline: dict  # rendered unit -> baseline unit (-1: none)
    needed: list[int]  # units whose example means are computed (index j)
    means: dict = field(default_factory=dict)  # L' -> float32 [len(needed), C'] (rows of units without examples: NaN)

    def sums_bytes(self, records) -> int:
        return 8 * len(self.needed) * sum(records[n].units for n in self.measured)  # float64 sums


class _Job:
    """What path_similarity computes, planned from the artifact (no forward yet): `total` images to forward."""

    def __init__(self, loaded, art, layers, k: int, seed: int, device, batch: int = BATCH):
        if int(k) < 1:
            raise ScopeError(f"--top-k must be >= 1, got {k}")
        if int(batch) < 1:
            raise ScopeError(f"--batch must be >= 1, got {batch}")
        self.loaded, self.art, self.k, self.seed, self.batch = loaded, art, int(k), int(seed), int(batch)
        self.device = resolve_device(device) if isinstance(device, str) or device is None else device
        pre = loaded.preprocess
        self.size, self.channels = int(pre.crop), len(pre.mean)
        names = plan_layers(art, layers)
        # compared at the file's real layers and every default layer of the model (the path through the network,
        # not only the layers someone collected)
        table = {i.name: i for i in layer_table(loaded.module, self.size)}
        real = list(dict.fromkeys([n for n in art.layers if not _space_layer(art, n)]
                                  + [n for n, i in table.items() if i.default]))
        self.records = {n: art.layer(n) if n in art.layers else table[n].record() for n in real}
        loaded.module.to(self.device)
        self.order = forward_order(loaded.module, real, self.channels, self.size, self.device)
        self.targets = [self._target(n) for n in names]
        self.images = sorted({m for t in self.targets for u in t.needed for m, _ in t.examples.get(u, [])})
        self.total = sum(len(t.rows) for t in self.targets) + len(self.images)

    def _target(self, layer: str) -> _Target:
        sec = self.art.section(layer, "renders")
        rows = []
        for i in range(sec.n):
            u, obj = int(sec.cols["unit"][i]), str(sec.cols["objective"][i])
            if u >= 0 and obj in OBJECTIVES:
                rows.append(_Row(i, u, obj, int(sec.cols["diversity_index"][i])))
        ex = self.art.examples(layer, "top")
        grid = self.records[layer].effective_layout.grid
        examples = {}
        for r, u in enumerate(ex.units):
            got = [(int(m), (min(max(int(y), 0), grid[0] - 1), min(max(int(x), 0), grid[1] - 1)))
                   for m, (y, x) in zip(ex.image_index[r, :self.k], ex.loc[r, :self.k]) if m >= 0]
            if got:
                examples[int(u)] = got
        candidates = sorted(examples)
        rendered = sorted({r.unit for r in rows})
        base = {u: baseline_unit(layer, u, self.seed, candidates) for u in rendered}
        needed = sorted({u for u in rendered if u in examples} | {v for v in base.values() if v >= 0})
        measured = self.order[: self.order.index(layer) + 1]
        return _Target(layer, measured, rows, examples, base, needed)

    # ------------------------------------------------------------------------------------------ forwards

    def _inputs(self, images) -> torch.Tensor:
        pre = self.loaded.preprocess
        x = torch.stack(images).to(self.device).float().div_(float(pre.qmax))
        return pre.normalize(x)

    def _units(self, out: torch.Tensor, name: str) -> torch.Tensor:
        return adapter.units(out, self.records[name].effective_layout)

    def measure_renders(self, t: _Target, bar=None) -> None:
        """Each render's vectors at every measured layer, at the positions corresponding to its p*."""
        views = self.art.renders(t.layer)
        rec = self.records[t.layer]
        module = self.loaded.module
        todo = []
        for row in t.rows:
            v = views[row.index]
            row.sha = png_sha256(v.encoded)
            if (int(v.height), int(v.width)) != (self.size, self.size):
                continue  # not at the model's input size: not measured
            img = v.image
            if img.ndim != 3 or img.shape[2] != self.channels:
                continue
            todo.append((row, img))
        skipped = len(t.rows) - len(todo)
        if bar is not None and skipped:
            bar.advance(skipped)
        with torch.no_grad(), LayerTap(module, t.measured) as tap:
            for b0 in range(0, len(todo), self.batch):
                part = todo[b0:b0 + self.batch]
                x = self._inputs([torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.int32))
                                  for _, img in part])
                outs = tap(x)
                acts = {n: self._units(outs[n], n) for n in t.measured}
                cols = int(rec.effective_layout.grid[1]) if rec.effective_layout.kind != "vector" else 1
                units = torch.tensor([row.unit for row, _ in part], device=acts[t.layer].device)
                best = acts[t.layer][torch.arange(len(part), device=units.device), units].argmax(dim=1).tolist()
                for i, (row, _) in enumerate(part):
                    p = divmod(int(best[i]), cols)
                    for n in t.measured:
                        y, xx = map_position(p, rec, self.records[n])
                        pos = y * self._cols(n) + xx
                        row.vectors[n] = acts[n][i, :, pos].float().cpu().numpy()
                if bar is not None:
                    bar.advance(len(part))

    def _cols(self, name: str) -> int:
        lay = self.records[name].effective_layout
        return 1 if lay.kind == "vector" else int(lay.grid[1])

    def measure_examples(self, targets: list[_Target], load, bar=None) -> None:
        """The mean vector of each needed unit's top-k examples at every measured layer of its target: one
        pass over the images these targets need, every measured layer tapped at once."""
        layers = list(dict.fromkeys(n for t in targets for n in self.order if n in set(t.measured)))
        # per image: (target index, L', unit row j, flat position)
        work: dict[int, list[tuple[int, str, int, int]]] = {}
        counts = []
        sums = []
        for ti, t in enumerate(targets):
            rec = self.records[t.layer]
            c = np.zeros(len(t.needed), np.int64)
            for j, u in enumerate(t.needed):
                for m, loc in t.examples.get(u, []):
                    c[j] += 1
                    for n in t.measured:
                        y, x = map_position(loc, rec, self.records[n])
                        work.setdefault(m, []).append((ti, n, j, y * self._cols(n) + x))
            counts.append(c)
            sums.append({n: torch.zeros(len(t.needed), self.records[n].units, dtype=torch.float64) for n in t.measured})
        images = sorted(work)
        module = self.loaded.module
        with torch.no_grad(), LayerTap(module, layers) as tap:
            for c0 in range(0, len(images), CHUNK):
                chunk = images[c0:c0 + CHUNK]
                loaded = load(chunk)
                for b0 in range(0, len(chunk), self.batch):
                    part = chunk[b0:b0 + self.batch]
                    outs = tap(self._inputs([loaded[m] for m in part]))
                    wanted: dict[tuple[int, str], list] = {}
                    for i, m in enumerate(part):
                        for ti, n, j, pos in work[m]:
                            wanted.setdefault((ti, n), []).append((i, pos, j))
                    acts = {n: self._units(outs[n], n) for n in {n for _, n in wanted}}
                    for (ti, n), trip in wanted.items():
                        idx = torch.tensor(trip, dtype=torch.long)
                        a = acts[n]
                        vecs = a[idx[:, 0].to(a.device), :, idx[:, 1].to(a.device)].double().cpu()
                        sums[ti][n].index_add_(0, idx[:, 2], vecs)
                    if bar is not None:
                        bar.advance(len(part))
                del loaded
        for ti, t in enumerate(targets):
            c = torch.from_numpy(counts[ti]).double().clamp(min=1).unsqueeze(1)
            none = torch.from_numpy(counts[ti] == 0)
            for n in t.measured:
                mean = (sums[ti][n] / c).float()
                mean[none] = float("nan")
                t.means[n] = mean.numpy()

    # ------------------------------------------------------------------------------------------ results

    def block(self, t: _Target) -> FaithfulnessBlock:
        row_of = {u: j for j, u in enumerate(t.needed)}
        out = []
        for row in t.rows:
            v = t.baseline.get(row.unit, -1)
            per, base = {n: math.nan for n in t.measured}, []
            if row.vectors and row.unit in t.examples:
                j = row_of[row.unit]
                per = {n: rank_correlation(row.vectors[n], t.means[n][j]) for n in t.measured}
            if row.vectors and v >= 0:
                jv = row_of[v]
                base = [rank_correlation(row.vectors[n], t.means[n][jv]) for n in t.measured]
            sim, bl = _mean(per.values()), _mean(base)
            flagged = bool(math.isfinite(sim) and math.isfinite(bl) and sim <= bl)
            out.append(PathEvidence(row.unit, row.objective, row.diversity_index, sim, bl, v, flagged, per, row.sha))
        return FaithfulnessBlock.from_rows(out, self.k, self.seed, layer_names=list(t.measured))

    def run(self, load, bar=None) -> dict[str, FaithfulnessBlock]:
        for t in self.targets:
            self.measure_renders(t, bar)
        group, size = [], 0
        for t in self.targets + [None]:  # targets in groups whose example sums fit the budget
            need = t.sums_bytes(self.records) if t is not None else 0
            if group and (t is None or size + need > SUMS_BUDGET):
                self.measure_examples(group, load, bar)
                group, size = [], 0
            if t is not None:
                group.append(t)
                size += need
        out = {t.layer: self.block(t) for t in self.targets}
        for t in self.targets:
            t.means.clear()
            for r in t.rows:
                r.vectors.clear()
        return out


def path_similarity(loaded, art, data, layers=None, k: int = 8, seed: int = 0, device="auto", progress=None,
                    batch: int = BATCH) -> dict[str, FaithfulnessBlock]:
    """Faithfulness evidence of the renders of `layers` (default: every layer of the artifact with renders and
    top examples): {layer: FaithfulnessBlock}, one row per render row measured.

    `loaded`: the artifact's model (LoadedModel, with its preprocessing); `art`: the open artifact; `data`:
    the folder or list collect read (images are checked by sha256 against the artifact's image table);
    `k`: top examples averaged per unit; `seed`: draws each unit's baseline unit; `progress`: an object with
    `.advance(n)`, told of every image forwarded (renders, then dataset images).

    Measured: renders of one unit (unit >= 0) with objective `channel` or `neuron`; layer-wide renders
    (unit -1, deepdream), other objectives (negative, direction, positioned `neuron@cls`) and unit-space
    layers `L@S` are left out. A render not at the model's input size, or a unit without top examples, gets
    a row with NaN (not measured). "Earlier layers" are the artifact's real layers that run before L in the
    model's forward pass. Each render is forwarded once; each dataset image once per pass, with every
    measured layer tapped (one pass unless the example sums of all layers exceed SUMS_BUDGET).
    """
    job = _Job(loaded, art, layers, k, seed, device, batch)
    load = _image_loader(art, data, loaded.preprocess) if job.images else None
    return job.run(load, progress)


def _median(values) -> float | None:
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    return round(float(np.median(v)), 6) if v.size else None


def run_path_similarity(loaded, artifact_path, data, layers=None, k: int = 8, seed: int = 0, device="auto",
                        quiet: bool = True, batch: int = BATCH) -> dict:
    """Compute the faithfulness evidence of the artifact's renders and store it (element `faithfulness`: each
    measured render's row replaces its earlier one; a run with another k or seed replaces the layer's rows
    wholesale); returns a JSON-able summary: per layer the render rows, those measured,
    the median similarity and baseline, and how many are flagged.

    `loaded`: the model (None: rebuilt from what the artifact records, `model/reopen.py`)."""
    t0 = time.perf_counter()
    path = os.fspath(artifact_path)
    with open_artifact(path) as art:
        if loaded is None:
            loaded = model_for_artifact(art.model)
        elif loaded.fingerprint != art.fingerprint:
            raise ScopeError(f"{path} was written for another model (fingerprint {art.fingerprint[:12]}…)")
        job = _Job(loaded, art, layers, k, seed, device, batch)
        load = _image_loader(art, data, loaded.preprocess) if job.images else None
        with progress_bar(job.total, "faithfulness", quiet=quiet, unit="image") as bar:
            blocks = job.run(load, bar)
        records = {name: art.layer(name) for name in blocks}
    params = {"layers": list(blocks), "k": int(k), "seed": int(seed), "data": str(getattr(data, "root", data))}
    with ArtifactWriter(path, loaded.info(), "faithfulness", params) as w:
        for name, block in blocks.items():
            w.ensure_layer(records[name])
            w.put(name, "faithfulness", block)
        w.add_timing("faithfulness_s", time.perf_counter() - t0)
    rows = []
    for name, b in blocks.items():
        measured = np.isfinite(b.similarity)
        rows.append({"layer": name, "renders": len(b), "measured": int(measured.sum()),
                     "median_similarity": _median(b.similarity), "median_baseline": _median(b.baseline),
                     "flagged": int(b.flagged.sum()), "layers_compared": list(b.layer_names)})
    return {"output": str(path), "layers": rows, "k": int(k), "seed": int(seed),
            "seconds": round(time.perf_counter() - t0, 2), "device": str(job.device)}


__all__ = ["baseline_unit", "forward_order", "map_position", "path_similarity", "plan_layers", "rank_correlation",
           "run_path_similarity"]
