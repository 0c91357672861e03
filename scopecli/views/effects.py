"""What a unit does for the model's decision: its attribution to each class's logit, and a causal check.

attribution(u, image) = sum over positions p of  a_u(image)[p] * d logit_c(image) / d a_u(image)[p]

with c the image's class: its label (the labels file's class index is the model's output index), or the model's
prediction when the data has no labels; `--output norm|INDEX` takes a scalar output of a model without class
logits (the embedding norm of an image tower, or one output). Summed per class over the images, with counts, so
shards add up exactly; a unit's mean attribution per class says which classes it votes for and against, and a
class's units ranked by their share of its positive attribution are its most important units (LENS-style).
For the inputs of a final linear layer the attribution is exactly weight x activation.

How: one forward and one backward per batch for all layers at once. Each layer's output passes through an
identity autograd function (`_Probe`) whose backward records the gradient arriving at it; the value is the
output as the layer returned it, before any in-place operation downstream. Only the part of the graph after the
first probed layer is differentiated (the input does not require a gradient).

The causal check (`ablate`): for each class with enough images, its top-k units are set to their dataset mean
(the layer's `stats`) at every position, in one forward with a per-image mask, and the drop of the class's logit
and accuracy on its images is measured; k random units of the layer (several seeded draws per class) give the
baseline.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import torch

from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.elements.effects import Ablation, EffectsBlock
from scopecli.core.devices import resolve_device
from scopecli.core.errors import ScopeError
from scopecli.core.progress import progress
from scopecli.model import adapter
from scopecli.model.layers import get_module
from scopecli.model.reopen import artifact_model
from scopecli.views.circuits import LayerOrder, _image_loader

BATCH = 16
ABLATE_K = 16
DRAWS = 4
MIN_IMAGES = 3


class _Probe(torch.autograd.Function):
    """Identity whose backward stores the gradient arriving at a layer's output in `store[key]`."""

    @staticmethod
    def forward(ctx, x, anchor, store, key):
        ctx.store, ctx.key = store, key
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.store[ctx.key] = grad
        return grad, None, None, None


def _scalar_output(out, output: str, n_classes_hint: int | None = None) -> tuple[torch.Tensor, bool]:
    """(logits [N, classes], True) for class logits, or ([N, 1], False) for a scalar output (--output)."""
    t = adapter.module_tensor(out, "the model's output")
    if output == "norm":
        return t.flatten(1).norm(dim=1, keepdim=True), False
    if output not in ("logit", "logits"):
        i = int(output)
        flat = t.flatten(1)
        if not 0 <= i < flat.shape[1]:
            raise ScopeError(f"--output {i}: the model has {flat.shape[1]} outputs")
        return flat[:, i:i + 1], False
    if t.dim() != 2:
        raise ScopeError(f"effects need class logits, and the model's output is {tuple(t.shape[1:])} per image (an image "
                         "tower or a feature extractor): pass --output norm (the output's norm) or --output INDEX")
    return t, True


def batch_attributions(module, x: torch.Tensor, layers: list[str], layouts: dict, targets=None, output: str = "logit"):
    """Attribution of every unit of every layer to each row's target logit, for one batch of normalized inputs.

    targets: LongTensor [N] of output indices (None: the model's prediction). Returns ({layer: [N, C] float64},
    the targets used [N], the target logits [N], the logits [N, classes] (None for a scalar output))."""
    grads: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    anchor = torch.zeros((), requires_grad=True, device=x.device)
    handles = []

    def hook_for(name):
        def hook(_m, _i, out):
            if name in acts:  # a module called twice: the first call is the layer
                return None
            t = adapter.module_tensor(out, name)
            acts[name] = t.detach()
            return adapter.replace_tensor(out, t, _Probe.apply(t, anchor, grads, name))
        return hook

    for name in layers:
        handles.append(get_module(module, name).register_forward_hook(hook_for(name)))
    try:
        with torch.enable_grad():
            scores, is_logits = _scalar_output(module(x), output)
            if is_logits:
                t = scores.detach().argmax(dim=1) if targets is None else targets.to(scores.device)
                if (t < 0).any() or (t >= scores.shape[1]).any():
                    raise ScopeError(f"a label's class index is outside the model's {scores.shape[1]} outputs: the labels "
                                     "are not the model's classes; pass --target predicted")
                picked = scores.gather(1, t.view(-1, 1)).squeeze(1)
            else:
                t = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
                picked = scores[:, 0]
            missing = [n for n in layers if n not in acts]
            if missing:
                raise ScopeError(f"layer {missing[0]} did not run in the forward pass")
            picked.sum().backward()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name in layers:
        g = grads.get(name)
        if g is None:
            raise ScopeError(f"the output does not depend on layer {name}")
        out[name] = adapter.units(acts[name].float() * g.float(), layouts[name]).double().sum(dim=2)
    return out, t.detach(), picked.detach(), (scores.detach() if is_logits else None)


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("_", " ").replace("-", " ")


def label_outputs(table, model_classes: list[str] | None) -> tuple[np.ndarray, str]:
    """(the model output index of each of the table's classes, how they were found): by name when the model
    knows its class names and every labelled class is among them ("names"), else the label is the output index
    (a labels file with a class-index column: "class index")."""
    n = len(table.class_names)
    identity = np.arange(n, dtype=np.int64)
    if not model_classes:
        return identity, "class index"
    used = sorted({int(v) for v in np.asarray(table.label) if v >= 0})
    where = {_norm(c): i for i, c in enumerate(model_classes)}
    found = {i: where.get(_norm(table.class_names[i])) for i in used}
    if not used or any(v is None for v in found.values()):
        return identity, "class index"
    out = identity.copy()
    for i, v in found.items():
        out[i] = v
    return out, "names"


def _targets_of(table, rows, target: str, outputs: np.ndarray | None = None) -> torch.Tensor | None:
    if target != "label":
        return None
    lab = np.asarray(table.label)[np.asarray(rows, np.int64)].astype(np.int64)
    if outputs is not None:
        lab = np.where(lab >= 0, outputs[np.clip(lab, 0, None)], -1)
    return torch.from_numpy(lab)


def compute_effects(loaded, art, data, layers: list[str], target: str = "label", output: str = "logit",
                    batch: int = BATCH, device=None, bar=None, load=None):
    """({layer: EffectsBlock} over every image of the artifact's table (found again under `data`), facts (images,
    accuracy where there are labels), {table row: (its class's output index, that logit, predicted right)} for the
    ablation check's unablated side (empty for a scalar output))."""
    table = art.dataset
    if table is None:
        raise ScopeError(f"{art.path} holds no image table: run scope collect first")
    if target == "label" and not table.class_names:
        raise ScopeError("the artifact's images have no labels: pass --target predicted (or collect with --labels)")
    dev = device or torch.device("cpu")
    module, pre = loaded.module, loaded.preprocess
    layouts = LayerOrder.of(module, pre.crop).layouts
    load = load or _image_loader(art, data, pre)
    n = len(table.paths)
    outputs, matched = label_outputs(table, getattr(loaded, "class_names", None)) if target == "label" else (None, "")
    out_names = {int(o): table.class_names[i] for i, o in enumerate(outputs)} if outputs is not None else {}
    widths = {name: art.layer(name).units for name in layers}
    sums = {name: None for name in layers}
    counts = None
    correct = labelled = 0
    base: dict[int, tuple[int, float, bool]] = {}
    was = module.training
    module.eval()
    module.to(dev)
    try:
        for b0 in range(0, n, batch):
            rows = list(range(b0, min(n, b0 + batch)))
            images = load(rows)
            x = torch.stack([images[r] for r in rows]).to(dev).float().div_(float(pre.qmax))
            x = pre.normalize(x)
            tgt = _targets_of(table, rows, target, outputs)
            if tgt is not None and (tgt < 0).any():
                keep = (tgt >= 0).numpy()
                x, tgt, rows = x[torch.from_numpy(keep).to(dev)], tgt[keep], [r for r, k in zip(rows, keep) if k]
                if not rows:
                    continue
            contrib, used, picked, logits = batch_attributions(module, x, layers, layouts, tgt,
                                                          "logit" if target in ("label", "predicted") else output)
            if counts is None:
                n_out = logits.shape[1] if logits is not None else 1
                counts = np.zeros(n_out, np.int64)
                for name in layers:
                    sums[name] = torch.zeros(n_out, widths[name], dtype=torch.float64)
            idx = used.cpu()
            np.add.at(counts, idx.numpy(), 1)
            if logits is not None:  # the unablated logits the ablation check compares with
                hit = (logits.argmax(dim=1) == used).cpu().tolist()
                for r, o, v, ok in zip(rows, idx.tolist(), picked.cpu().tolist(), hit):
                    base[r] = (int(o), float(v), bool(ok))
            for name in layers:
                if contrib[name].shape[1] != widths[name]:
                    raise ScopeError(f"layer {name} has {contrib[name].shape[1]} units here, {widths[name]} in the file")
                sums[name].index_add_(0, idx, contrib[name].cpu())
            if logits is not None and target == "label":
                correct += int((logits.argmax(dim=1).cpu() == idx).sum())
                labelled += len(rows)
            if bar is not None:
                bar.advance(len(rows))
    finally:
        module.train(was)
    if counts is None:
        raise ScopeError("no image had a label to attribute to: pass --target predicted")
    have = np.flatnonzero(counts)
    if target in ("norm", "index"):
        cls_names = [f"output {output}" if target == "index" else "output norm"]
    else:
        model_names = getattr(loaded, "class_names", None) or []
        cls_names = [out_names.get(int(c)) or (model_names[c] if c < len(model_names) else f"class {c}") for c in have]
    blocks = {name: EffectsBlock(have.astype(np.int64), cls_names, counts[have], sums[name].numpy()[have], target)
              for name in layers}
    facts = {"images": int(counts.sum()), "classes": int(len(have))}
    if matched:
        facts["labels"] = matched  # how labels became output indices: "class index" or "names"
    if labelled:
        facts["accuracy"] = round(correct / labelled, 4)
    return blocks, facts, base


class _Ablate:
    """Forward hook: per image, the masked units of the layer set to their dataset mean at every position."""

    def __init__(self, layout, means: torch.Tensor):
        self.layout, self.means, self.mask = layout, means, None

    def __call__(self, _m, _i, out):
        if self.mask is None:
            return None
        t = adapter.module_tensor(out, "ablated layer")
        c = adapter.canonical(t, self.layout)  # (N, C, ...)
        shape = (c.shape[0], c.shape[1]) + (1,) * (c.dim() - 2)
        m = self.mask.to(c.dtype).view(shape)
        mean = self.means.to(c.device, c.dtype).view((1, c.shape[1]) + (1,) * (c.dim() - 2))
        new_c = c * (1 - m) + mean * m
        perm = list(self.layout.perm)
        inverse = [perm.index(i) for i in range(len(perm))]
        new = new_c.permute(*inverse) if perm != list(range(len(perm))) else new_c
        return adapter.replace_tensor(out, t, new.contiguous() if not new.is_contiguous() else new)


def _random_units(seed: int, layer: str, class_index: int, draw: int, units: int, k: int) -> np.ndarray:
    text = f"scope-ablation|{int(seed)}|{layer}|{int(class_index)}|{int(draw)}"
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))
    return np.sort(rng.choice(units, size=min(k, units), replace=False))


def ablate(loaded, art, layer: str, block: EffectsBlock, data=None, k: int = ABLATE_K, draws: int = DRAWS,
           seed: int = 0, min_images: int = MIN_IMAGES, batch: int = BATCH, device=None, bar=None, load=None,
           base: dict | None = None) -> Ablation:
    """The causal check of every class of `block` with at least `min_images` images (labels or predictions, as the
    block's target): mean logit drop and accuracy with its top-k units, and with k random units (per draw), set to
    their dataset mean. `base`: the unablated logits `compute_effects` saw (else one more forward pass)."""
    if block.target not in ("label", "predicted"):
        raise ScopeError("the ablation check needs class logits (not --output norm/INDEX)")
    stats = art.stats(layer)
    units = art.layer(layer).units
    if stats is None or len(stats.units) != units:
        raise ScopeError(f"the ablation check sets units to their dataset mean: {layer} needs statistics of every unit "
                         "(scope collect)")
    means = torch.zeros(units, dtype=torch.float32)
    means[torch.from_numpy(np.asarray(stats.units, np.int64))] = torch.from_numpy(np.asarray(stats.mean, np.float32))
    table = art.dataset
    dev = device or torch.device("cpu")
    module, pre = loaded.module, loaded.preprocess
    layout = LayerOrder.of(module, pre.crop).layouts[layer]
    load = load or _image_loader(art, data, pre)
    top_units, _ = block.class_tables()
    # each image's class, as the block counted it (its label or the model's prediction)
    rows_all = np.arange(len(table.paths))
    checked = {i for i in range(len(block.classes)) if block.images[i] >= min_images}
    hook = _Ablate(layout, means)
    handle = get_module(module, layer).register_forward_hook(hook)
    module.eval()
    module.to(dev)
    per_class: dict[int, dict] = {}
    try:
        if base is None:  # the unablated pass
            base = {}
            outputs = label_outputs(table, getattr(loaded, "class_names", None))[0]
            for b0 in range(0, len(rows_all), batch):
                rows = [int(r) for r in rows_all[b0:b0 + batch]]
                images = load(rows)
                x = pre.normalize(torch.stack([images[r] for r in rows]).to(dev).float().div_(float(pre.qmax)))
                with torch.no_grad():
                    logits = _scalar_output(module(x), "logit")[0].float().cpu()
                lab = _targets_of(table, rows, "label", outputs)
                for j, r in enumerate(rows):
                    o = int(lab[j]) if block.target == "label" else int(logits[j].argmax())
                    if 0 <= o < logits.shape[1]:
                        base[r] = (o, float(logits[j, o]), int(logits[j].argmax()) == o)
                if bar is not None:
                    bar.advance(len(rows))
        pos = {int(c): i for i, c in enumerate(block.classes)}
        cls_of_image = {int(r): pos[o] for r, (o, _, _) in base.items() if o in pos and pos[o] in checked}
        for r, c in cls_of_image.items():
            d = per_class.setdefault(c, {"n": 0, "base": 0.0, "base_ok": 0, "top": 0.0, "top_ok": 0,
                                         "rand": np.zeros(draws), "rand_ok": np.zeros(draws)})
            d["n"] += 1
            d["base"] += base[r][1]
            d["base_ok"] += base[r][2]
        pool = np.array(sorted(cls_of_image), np.int64)  # only the images of the checked classes
        if bar is not None:
            bar.advance((len(rows_all) - len(pool)) * (1 + draws))
        for p in range(1, 2 + draws):  # 1: the class's top units, 2..: random draws
            for b0 in range(0, len(pool), batch):
                rows = [int(r) for r in pool[b0:b0 + batch]]
                images = load(rows)
                x = pre.normalize(torch.stack([images[r] for r in rows]).to(dev).float().div_(float(pre.qmax)))
                mask = torch.zeros(len(rows), units)
                for j, r in enumerate(rows):
                    c = cls_of_image[r]
                    if p == 1:
                        chosen = top_units[c][:k]
                        chosen = chosen[chosen >= 0]
                    else:
                        chosen = _random_units(seed, layer, int(block.classes[c]), p - 2, units, k)
                    mask[j, torch.from_numpy(np.asarray(chosen, np.int64))] = 1.0
                hook.mask = mask.to(dev)
                with torch.no_grad():
                    logits = _scalar_output(module(x), "logit")[0].float().cpu()
                hook.mask = None
                for j, r in enumerate(rows):
                    c = cls_of_image[r]
                    d, idx = per_class[c], int(block.classes[c])
                    ok = int(logits[j].argmax()) == idx
                    if p == 1:
                        d["top"] += float(logits[j, idx])
                        d["top_ok"] += ok
                    else:
                        d["rand"][p - 2] += float(logits[j, idx])
                        d["rand_ok"][p - 2] += ok
                if bar is not None:
                    bar.advance(len(rows))
    finally:
        handle.remove()
    done = sorted(c for c in per_class if per_class[c]["n"] >= min_images)
    a = len(done)
    units_tab = np.full((a, k), -1, np.int64)
    for i, c in enumerate(done):
        chosen = top_units[c][:k]
        units_tab[i, :len(chosen)] = chosen
    def col(fn) -> np.ndarray:
        return np.array([fn(per_class[c]) for c in done], np.float32)

    out = Ablation(
        rows=np.array(done, np.int32), units=units_tab, base_logit=col(lambda d: d["base"] / d["n"]),
        top_drop=col(lambda d: (d["base"] - d["top"]) / d["n"]),
        random_drop=col(lambda d: (d["base"] - d["rand"]) / d["n"]).reshape(a, draws),
        base_acc=col(lambda d: d["base_ok"] / d["n"]), top_acc=col(lambda d: d["top_ok"] / d["n"]),
        random_acc=col(lambda d: d["rand_ok"] / d["n"]).reshape(a, draws),
        k=int(k), seed=int(seed), min_images=int(min_images))
    return out


def run_effects(path, data, layers=None, target: str | None = None, output: str = "logit", ablation: bool = True,
                ablate_layers=None, k: int = ABLATE_K, draws: int = DRAWS, seed: int = 0, min_images: int = MIN_IMAGES,
                model: str | None = None, weights: str | None = None, loaded=None, device: str = "auto",
                batch: int = BATCH, quiet: bool = True) -> dict:
    """`scope effects`: compute and store the effects (and the ablation check) of the artifact's layers; returns a
    JSON-able summary. Layers default to those with statistics (real layers, not unit spaces)."""
    if int(batch) < 1:
        raise ScopeError(f"--batch must be >= 1, got {batch}")
    if int(k) < 1 or int(draws) < 1 or int(min_images) < 1:
        raise ScopeError("--ablate-k, --draws and --min-images must be >= 1")
    if output not in ("logit", "norm") and not str(output).lstrip("-").isdigit():
        raise ScopeError(f"--output must be logit, norm or an output index, got {output!r}")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    with open_artifact(path) as art:
        loaded = artifact_model(art.model, art.fingerprint, loaded, model, weights, str(path))
        if not layers:
            layers = [n for n in art.layers if "@" not in n and art.stats(n) is not None]
            if not layers:
                raise ScopeError(f"{os.path.basename(str(path))} has no collected layers: run scope collect first")
        for name in layers:
            if "@" in name:
                raise ScopeError(f"{name} is a unit space; effects are computed for real layers")
            art.layer(name)
        if target is None:
            target = "label" if art.dataset is not None and art.dataset.class_names else "predicted"
        if output != "logit":
            target = "norm" if output == "norm" else "index"
        if target not in ("label", "predicted", "norm", "index"):
            raise ScopeError(f"--target must be label or predicted, got {target!r}")
        load = _image_loader(art, data, loaded.preprocess)
        n = len(art.dataset.paths) if art.dataset is not None else 0
        ab_layers = [] if not ablation or target in ("norm", "index") else list(ablate_layers or layers)
        for name in ab_layers:
            if name not in layers:
                raise ScopeError(f"--ablate-layer {name} is not among the layers whose effects are computed")
        with progress(n * (1 + (1 + draws) * len(ab_layers)), "effects", quiet=quiet, unit="img") as bar:
            blocks, facts, base = compute_effects(loaded, art, data, list(layers), target, output, int(batch), dev,
                                                  bar, load)
            for name in ab_layers:
                blocks[name].ablation = ablate(loaded, art, name, blocks[name], k=int(k), draws=int(draws),
                                               seed=int(seed), min_images=int(min_images), batch=int(batch),
                                               device=dev, bar=bar, load=load, base=base)
        records = {name: art.layer(name) for name in layers}
    params = {"layers": list(layers), "target": target, "output": output, "ablation_layers": ab_layers, "k": int(k),
              "draws": int(draws), "seed": int(seed), "min_images": int(min_images),
              "data": str(getattr(data, "root", data))}
    with ArtifactWriter(path, loaded.info(), "effects", params) as w:
        for name in layers:
            w.ensure_layer(records[name])
            w.put(name, "effects", blocks[name])
        w.add_timing("effects_s", time.perf_counter() - t0)
    summary = {"output": str(path), "target": target, **facts, "layers": []}
    for name in layers:
        row = {"layer": name, "classes": int(len(blocks[name].classes))}
        a = blocks[name].ablation
        if a is not None and len(a.rows):
            ratio = ablation_ratios(a)
            row.update({"ablation_classes": int(len(a.rows)),
                        "median_top_drop": round(float(np.median(a.top_drop)), 4),
                        "median_random_drop": round(float(np.median(a.random_drop.mean(axis=1))), 4),
                        "median_ratio": round(float(np.median(ratio)), 3) if len(ratio) else None})
        summary["layers"].append(row)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["device"] = str(dev)
    if target == "label" and facts.get("accuracy") is not None and facts["accuracy"] < 0.02 and facts["images"] >= 50:
        summary["note"] = (f"the model gets {facts['accuracy']:.1%} of the labels right: the labels may not be the model's "
                           "class indices (use a labels file with a class-index column, or --target predicted)")
    return summary


def ablation_ratios(a: Ablation) -> np.ndarray:
    """Per checked class: logit drop of its top units / mean drop of random units (classes whose random drop is
    not positive are left out: no ratio)."""
    rand = a.random_drop.mean(axis=1)
    ok = rand > 1e-9
    return (a.top_drop[ok] / rand[ok]).astype(np.float64)
