"""Feature visualizations of directions in a layer's activation space (what activation atlases render).

Each batch row renders one direction d: it maximizes the mean over positions of dot(a, d) * max(cos(a, d),
0.1) ** power (objectives.CellDirectionScore, Lucid's direction_neuron_cossim), from a random start in the usual
parameterization, under the usual transforms. A row's random draws come from a seed derived from the run
seed, the model, the layer and the row's key (an atlas cell), so a cell renders the same in any batch.
The evidence returned with each image: the score of the initial image and of the final one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from scopecli.core.devices import resolve_device
from scopecli.model.capture import LayerTap
from scopecli.render import transforms as tf
from scopecli.render.ascent import ascend
from scopecli.render.engine import _Normalize, activation_views
from scopecli.render.objectives import CellDirectionScore
from scopecli.render.param import make_param


@dataclass
class DirectionRender:
    image: np.ndarray  # HxWxC uint8 (uint16 for a 16-bit input spec)
    act_start: float
    act_final: float


def direction_seed(seed: int, fingerprint: str, layer: str, key: str) -> int:
    text = f"scope-direction|{int(seed)}|{fingerprint}|{layer}|{key}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def render_directions(loaded, layer: str, layout, directions: np.ndarray, keys: list[str], *, size: int,
                      steps: int, lr: float = 0.05, power: float = 1.0, param: str = "fft", seed: int = 0,
                      batch: int = 16, device: str = "auto", spec: tf.TransformSpec | None = None,
                      progress=None) -> list[DirectionRender]:
    """One image per row of `directions` [n, C] (keys: a stable name per row, for its seed)."""
    module, pre = loaded.module, loaded.preprocess
    spec = spec or tf.for_input_size(tf.TransformSpec(), int(pre.crop))
    dev = resolve_device(device)
    normalize = _Normalize(pre.mean, pre.std)
    was_training = module.training
    module.eval()
    module.to(dev)
    out: list[DirectionRender] = []
    try:
        for b0 in range(0, len(directions), int(batch)):
            rows = slice(b0, b0 + int(batch))
            seeds = [direction_seed(seed, loaded.fingerprint, layer, k) for k in keys[rows]]
            out.extend(_batch(module, normalize, layer, layout, directions[rows], seeds, size, steps, lr, power,
                              param, spec, dev, progress, pre))
    finally:
        module.train(was_training)
    return out


def _batch(module, normalize, layer, layout, directions, seeds, size, steps, lr, power, param_kind, spec, device,
           progress, pre):
    n = len(directions)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    param = make_param(param_kind, size, gens, channels=int(pre.channels)).to(device)
    thetas = tf.affine_matrices(torch.stack([tf.draw(g, steps) for g in gens], dim=1), size, spec).to(device)
    objective = CellDirectionScore(layer, list(range(n)), directions, n, power)
    layouts = {layer: layout}
    with LayerTap(module, [layer]) as tap:
        def score(image):
            return objective(activation_views(tap(normalize(image)), layouts, [layer]))

        with torch.no_grad():
            start = score(param().float()).cpu()
        ascend(param, steps, lr, lambda step: -score(tf.warp(param(), thetas[step], spec.pad_value)).sum(),
               progress, n)
        with torch.no_grad():
            image = param().float()
            final = score(image).cpu()
    pixels = tf.to_pixels(image, int(pre.bit_depth))
    return [DirectionRender(tf.stored_pixels(pixels[i]), float(start[i]), float(final[i])) for i in range(n)]


__all__ = ["DirectionRender", "direction_seed", "render_directions"]
