"""Strongest inputs (the Circuits view): which units of an earlier layer L' build a unit u of layer L.

attribution(v -> u) = mean over u's top dataset examples x of  sum over positions p of
                      a_v(x)[p] * d max_q a_u(x)[q] / d a_v(x)[p]

(gradient x input). Why this and not the weights: it works for any architecture between L' and L
(residual branches, squeeze-excitation, attention), and for a plain conv -> conv pair it reduces to the
weight table: with a 1x1 conv it is W[u, v] times v's activation at u's peak, with a k x k conv on
constant inputs the kernel sum of W[u, v]. Averaging over u's top examples says what builds u where u
actually fires; a unit that never fires (no top example above 0) gets no attribution and says so.

How: L' is cut out of the graph by a forward hook that returns its output detached as a leaf tensor;
the forward stops after L (`LayerTap`); one backward of the sum over rows gives every row its own
gradient, because each row is one (image, unit) pair and rows do not interact in eval mode. L' must run
before L and L must depend on it ("not on the path" otherwise).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from scopecli.core.records import INPUTS_K as K, InputsBlock
from scopecli.core.devices import resolve_device
from scopecli.core.errors import ScopeError
from scopecli.model import adapter
from scopecli.model.capture import LayerTap
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.core.fileio import did_you_mean
from scopecli.core.progress import progress
from scopecli.core.units import parse_units
from scopecli.data.dataset import ImageSource, MAX_PIXELS, ModelInputs, PixelSpec, open_source
from scopecli.model.layers import LAYERS_HINT, get_module, layer_table
from scopecli.model.reopen import artifact_model

BATCH = 32  # (image, unit) rows per forward/backward


@dataclass
class LayerOrder:
    """The model's addressable layers in execution order, and which of them are default layers."""

    names: list[str]
    defaults: list[str]
    layouts: dict

    @classmethod
    def of(cls, module, crop: int) -> "LayerOrder":
        table = layer_table(module, crop)
        return cls([i.name for i in table], [i.name for i in table if i.default], {i.name: i.layout for i in table})

    def index(self, name: str) -> int:
        if name not in self.names:
            raise ScopeError(f"unknown layer '{name}'" + did_you_mean(name, self.names, listing=LAYERS_HINT))
        return self.names.index(name)

    def previous_default(self, layer: str) -> str:
        """The default layer that runs last before `layer` (the default L')."""
        i = self.index(layer)
        before = [d for d in self.defaults if self.names.index(d) < i]
        if not before:
            raise ScopeError(f"no default layer runs before {layer}; name the input layer with --from")
        return before[-1]

    def check_pair(self, target: str, source: str) -> None:
        """Refuse L' == L and an L' that runs after L (the "not on the path" case shows at the first batch)."""
        if source == target:
            raise ScopeError(f"--from {source}: a layer is not its own input; name an earlier layer")
        if self.index(source) > self.index(target):
            raise ScopeError(f"--from {source} runs after {target} (it is deeper): strongest inputs come from an "
                             "earlier layer")


class _Cut:
    """Forward hook on L': its first output is replaced by a detached leaf that requires grad."""

    def __init__(self):
        self.leaf: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if self.leaf is not None:
            return None
        tensor = adapter.module_tensor(output)
        self.leaf = tensor.detach().requires_grad_(True)
        return adapter.replace_tensor(output, tensor, self.leaf)


def attributions(module, x: torch.Tensor, units: torch.Tensor, target: str, source: str, layouts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient x input of unit `units[i]`'s maximum over positions of `target`, for row i of `x`
    (normalized model inputs), with respect to every channel of `source`, summed over positions.

    Returns (attribution [rows, C'] float32, the maximum itself [rows]). Raises when `source` is not on
    the path to `target`.
    """
    cut = _Cut()
    handle = get_module(module, source).register_forward_hook(cut)
    try:
        with torch.enable_grad(), LayerTap(module, [target]) as tap:
            out = tap(x)[target]
            if cut.leaf is None:
                raise ScopeError(f"--from {source} did not run before {target}: it is not an input of it")
            acts = adapter.units(out, layouts[target]).float()  # (rows, C, P)
            rows = torch.arange(acts.shape[0], device=acts.device)
            peak = acts[rows, units.to(acts.device)].amax(dim=1)
            if not peak.requires_grad:
                raise ScopeError(f"{target} does not depend on --from {source}: that layer is not on the path to it")
            (grad,) = torch.autograd.grad(peak.sum(), [cut.leaf], allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        raise ScopeError(f"{target} does not depend on --from {source}: that layer is not on the path to it")
    contrib = adapter.canonical(cut.leaf.detach() * grad, layouts[source]).float()
    contrib = contrib.reshape(contrib.shape[0], contrib.shape[1], -1).sum(dim=2)
    return contrib, peak.detach()


def _image_loader(art, data, pre, max_pixels=None):
    """load(table rows) -> {row: uint8 CHW model input}: the images collect read, found again under `data`
    (a folder, a list file, or an already opened `ImageSource`) and checked by sha256 against the
    artifact's image table."""
    table = art.dataset
    if table is None:
        raise ScopeError(f"{art.path} holds no image table: run scope collect first")
    source = data if isinstance(data, ImageSource) else open_source(data)
    data = source.root if isinstance(data, ImageSource) else data
    where = {p: f for p, f in zip(source.paths, source.files)}

    def load(rows) -> dict[int, torch.Tensor]:
        rows = [int(r) for r in rows]
        missing = [table.paths[r] for r in rows if table.paths[r] not in where]
        if missing:
            raise ScopeError(f"--data {data}: {missing[0]} (an image of the artifact's dataset) is not there; give the "
                             "folder or list collect read")
        files = [where[table.paths[r]] for r in rows]
        ds = ModelInputs(files, range(len(files)), pre.resize, pre.crop, pre.interpolation, max_pixels or MAX_PIXELS,
                         pixels=PixelSpec.of(pre))
        out = {}
        for r, i in zip(rows, range(len(files))):
            item = ds[i]
            if not item["ok"]:
                raise ScopeError(f"--data {data}: {table.paths[r]} cannot be read ({item['reason']})")
            if item["sha256"] != table.sha256[r]:
                raise ScopeError(f"--data {data}: {table.paths[r]} differs from the image collect read (sha256); "
                                 "the dataset changed since")
            out[r] = item["image"]
        return out

    return load


def layer_inputs(loaded, art, target: str, source: str, load, layouts: dict, units=None, top_k: int | None = None,
                 device: torch.device | None = None, batch: int = BATCH, bar=None, k: int = K) -> tuple[InputsBlock, list[int]]:
    """The strongest inputs from `source` of the units of `target` (all with top examples, or `units`).

    Returns the block to store and the units that never fire on the data (no attribution)."""
    ex = art.examples(target, "top")
    if ex is None:
        raise ScopeError(f"{target} has no dataset examples in {os.path.basename(art.path)}: run scope collect on it first")
    rows_of = {int(u): i for i, u in enumerate(ex.units)}
    wanted = sorted(rows_of) if units is None else [int(u) for u in units]
    lacking = [u for u in wanted if u not in rows_of]
    if lacking:
        raise ScopeError(f"{target}:{lacking[0]} has no dataset examples: collect it first")
    kk = ex.score.shape[1] if top_k is None else max(1, min(int(top_k), ex.score.shape[1]))
    pairs, never = [], []
    for u in wanted:
        i = rows_of[u]
        score, img = ex.score[i, :kk], ex.image_index[i, :kk]
        fired = [(int(m), u) for s, m in zip(score, img) if m >= 0 and np.isfinite(s) and s > 0]
        if not fired:
            never.append(u)
        pairs.extend(fired)
    module, pre = loaded.module, loaded.preprocess
    device = device or torch.device("cpu")
    module.to(device)
    width = None
    sums: dict[int, torch.Tensor] = {}
    counts = {u: 0 for u in wanted}
    pairs.sort()  # rows of one image together: each image is decoded once per chunk
    chunk = max(batch, 256)
    for c0 in range(0, len(pairs), chunk):
        part = pairs[c0:c0 + chunk]
        images = load(sorted({m for m, _ in part}))
        for b0 in range(0, len(part), batch):
            rows = part[b0:b0 + batch]
            x = torch.stack([images[m] for m, _ in rows]).to(device).float().div_(float(pre.qmax))
            x = pre.normalize(x)
            contrib, _ = attributions(module, x, torch.tensor([u for _, u in rows]), target, source, layouts)
            contrib = contrib.cpu().double()
            width = contrib.shape[1]
            for (m, u), row in zip(rows, contrib):
                sums[u] = sums[u] + row if u in sums else row.clone()
                counts[u] += 1
            if bar is not None:
                bar.advance(len(rows))
    if width is None:  # no unit fired: the source width comes from one probe forward
        width = art.layer(source).units if source in art.layers else 0
    table = np.full((len(wanted), width), np.nan)
    for i, u in enumerate(wanted):
        if counts[u]:
            table[i] = (sums[u] / counts[u]).numpy()
    return InputsBlock.from_table(wanted, source, table, [counts[u] for u in wanted], k), never


def plan_layers(art, order: LayerOrder, layers, from_layer: str | None, strict: bool | None = None) -> list[tuple[str, str]]:
    """(L, L') pairs: the named layers (default: the artifact's layers with top examples) with their input
    layer (--from, or each one's previous default layer). A default run skips layers with no earlier
    default layer (the first block) and, with --from, the layers not after it; named ones are refused
    (`strict`, default: whether layers were named)."""
    named = bool(layers) if strict is None else strict
    if not layers:
        layers = [name for name in art.layers if art.section(name, "examples") is not None]
        if not layers:
            raise ScopeError(f"{os.path.basename(art.path)} has no dataset examples: run scope collect first")
    out = []
    for layer in layers:
        if layer not in art.layers:
            art.layer(layer)  # the usual "not in the file" error with suggestions
        order.index(layer)
        if from_layer is not None:
            if not named and (from_layer == layer or order.index(from_layer) > order.index(layer)):
                continue  # a default run with --from: only the layers after it
            order.check_pair(layer, from_layer)
            out.append((layer, from_layer))
            continue
        try:
            out.append((layer, order.previous_default(layer)))
        except ScopeError:
            if named:
                raise
    if not out:
        raise ScopeError(f"no layer of {os.path.basename(art.path)} runs after --from {from_layer}" if from_layer
                         else "no layer has an earlier default layer to take inputs from; name one with --from")
    return out


def run_circuits(path, data, from_layer: str | None = None, layers=None, units: str | None = None,
                 top_k: int | None = None, model: str | None = None, weights: str | None = None,
                 loaded=None, device: str = "auto", batch: int = BATCH, quiet: bool = True, log=None,
                 strict: bool | None = None) -> dict:
    """Compute and store the strongest inputs of the artifact's layers; returns a JSON-able summary.

    `loaded`: the model (collect passes its own); otherwise rebuilt from the artifact (`model/reopen.py`).
    `log(message)` receives one-line notes (units that never fire). `strict`: see `plan_layers`."""
    if int(batch) < 1:
        raise ScopeError(f"--batch must be >= 1, got {batch}")
    if top_k is not None and int(top_k) < 1:
        raise ScopeError(f"--top-k must be >= 1, got {top_k}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    with open_artifact(path) as art:
        loaded = artifact_model(art.model, art.fingerprint, loaded, model, weights, str(path))
        order = LayerOrder.of(loaded.module, loaded.preprocess.crop)
        pairs = plan_layers(art, order, layers, from_layer, strict)
        load = _image_loader(art, data, loaded.preprocess)
        chosen = {}
        total = 0
        for target, _ in pairs:
            ex = art.examples(target, "top")
            if ex is None:
                raise ScopeError(f"{target} has no dataset examples in {os.path.basename(path)}: run scope collect on it first")
            sel = None if units is None else parse_units(units, art.layer(target).units)
            chosen[target] = sel
            rows = np.isin(ex.units, sel) if sel is not None else np.ones(len(ex.units), bool)
            kk = ex.score.shape[1] if top_k is None else min(int(top_k), ex.score.shape[1])
            total += int(((ex.score[rows, :kk] > 0) & (ex.image_index[rows, :kk] >= 0)).sum())
        blocks, never = {}, {}
        with progress(total, "circuits", quiet=quiet, unit="example") as bar:
            for target, source in pairs:
                blocks[target], never[target] = layer_inputs(loaded, art, target, source, load, order.layouts,
                                                             chosen[target], top_k, dev, int(batch), bar)
        records = {name: art.layer(name) for name in art.layers}
    params = {"layers": {t: s for t, s in pairs}, "top_k": top_k, "units": units, "k": K,
              "data": str(getattr(data, "root", data))}
    with ArtifactWriter(path, loaded.info(), "circuits", params) as w:
        for target, _ in pairs:
            w.ensure_layer(records[target])
            w.put(target, "inputs", blocks[target])
        w.add_timing("circuits_s", time.perf_counter() - t0)
    for target, units_never in never.items():
        if units_never and log is not None:
            shown = ", ".join(str(u) for u in units_never[:12]) + (" …" if len(units_never) > 12 else "")
            log(f"{len(units_never)} unit(s) of {target} never fire on the data (no top example above 0): no "
                f"attribution for {shown}")
    return {"output": str(path), "layers": [{"layer": t, "from": s, "units": int(len(blocks[t].units)),
                                             "never_fire": never[t]} for t, s in pairs],
            "seconds": round(time.perf_counter() - t0, 2), "device": str(dev)}


__all__ = ["LayerOrder", "attributions", "layer_inputs", "plan_layers", "run_circuits"]
