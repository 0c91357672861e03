"""Caricatures (Microscope's view, Lucid's recipe): a photo re-optimized so that a layer's response to it
is exaggerated.

Each row of a batch is one (layer, photo) pair. The image starts as the photo itself, in the usual
parameterization (the Fourier spectrum or pixels that reproduce it through the decorrelated colour map
and the sigmoid), and is optimized under the usual transforms to maximize
    dot(a, a_photo) * max(cos(a, a_photo), 0.1) ** power
where a is the image's activation of the whole layer and a_photo the photo's under the same transform
(objectives.DotCompare). What it shows: the features the layer sees in the photo, pushed further. The
evidence stored with each image: the cosine between the caricature's activation and the photo's (how
much of the photo's pattern is kept) and the ratio of their magnitudes (how much it was exaggerated),
both on the untransformed images. Several layers and photos run in one batch; every random draw of a row
comes from a seed derived from the run seed, the model, the layer and the photo's sha256.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scopecli.core.records import Caricature
from scopecli.core.devices import resolve_device
from scopecli.core.errors import ScopeError
from scopecli.model.capture import LayerTap
from scopecli.render import transforms as tf
from scopecli.render.ascent import ascend
from scopecli.render.engine import _Normalize, activation_views
from scopecli.render.objectives import DotCompare
from scopecli.render.param import _FFT_DAMP, FFTParam, PixelParam, make_param
from scopecli.core.settings import CheckedSettings, reads
from scopecli.artifact import ArtifactWriter
from scopecli.core.progress import progress
from scopecli.data.dataset import ModelInputs, PixelSpec
from scopecli.model.layers import select_layers

PARAMS = ("fft", "pixel")  # MACO fixes the magnitude spectrum, so it cannot start from a photo


@dataclass
class CaricatureSettings(CheckedSettings):
    """Everything that decides a caricature (recorded in the artifact)."""

    steps: int = 256
    lr: float = 0.05
    power: float = 1.0
    param: str = "fft"
    seed: int = 0
    batch: int = 8
    device: str = "auto"
    transforms: tf.TransformSpec = field(default_factory=tf.TransformSpec)

    @reads("steps")
    def _steps(self) -> None:
        if int(self.steps) < 1:
            raise ScopeError(f"--steps must be positive, got {self.steps}")

    @reads("lr")
    def _lr(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ScopeError(f"--lr must be a positive number, got {self.lr}")

    @reads("power")
    def _power(self) -> None:
        if not (self.power >= 0 and math.isfinite(self.power)):
            raise ScopeError(f"--power must be >= 0 (0: plain dot product), got {self.power}")

    @reads("param")
    def _param(self) -> None:
        if self.param not in PARAMS:
            raise ScopeError(f"--param {self.param}: a caricature starts from the photo, which needs one of "
                             f"{', '.join(PARAMS)}")

    @reads("batch")
    def _batch(self) -> None:
        if int(self.batch) < 1:
            raise ScopeError(f"--batch must be a positive integer, got {self.batch}")

    def describe(self) -> dict:
        return {"steps": int(self.steps), "lr": float(self.lr), "power": float(self.power), "param": self.param,
                "seed": int(self.seed), "transforms": self.transforms.describe(),
                "objective": "dot(a, a_photo) * max(cos, 0.1) ** power"}


@dataclass
class Photo:
    """A photo as the model sees it: resized and centre-cropped, [0, 1] floats (3, H, W)."""

    name: str
    sha256: str
    pixels: torch.Tensor


def load_photos(paths, preprocess) -> list[Photo]:
    """Read photos with collect's reader (same checks, same crop); a photo the model cannot read is a
    one-line error naming it. The same photo given twice is kept once."""
    if not paths:
        raise ScopeError("give at least one photo with --image PATH")
    out, seen = [], set()
    pre = preprocess
    for p in paths:
        path = Path(os.fspath(p)).expanduser()
        if not path.is_file():
            raise ScopeError(f"photo {p}: {'is a directory' if path.is_dir() else 'no such file'}")
        got = ModelInputs([path], [0], pre.resize, pre.crop, pre.interpolation, pixels=PixelSpec.of(pre))[0]
        if not got["ok"]:
            raise ScopeError(f"photo {p}: {got['reason']}")
        if got["sha256"] in seen:
            continue
        seen.add(got["sha256"])
        out.append(Photo(path.name, got["sha256"], got["image"].float().div_(float(pre.qmax)).clamp(0, 1)))
    return out


def param_from_photos(kind: str, photos: torch.Tensor) -> torch.nn.Module:
    """The parameterization `kind` whose image is `photos` (N, C, H, W in [0, 1]), up to a clamp that keeps
    the sigmoid's inverse finite: the optimization starts from the photos themselves."""
    n, c, h, w = photos.shape
    if h != w:
        raise ScopeError(f"caricatures need square inputs, got {w}x{h}")
    gens = [torch.Generator().manual_seed(0) for _ in range(n)]
    param = make_param(kind, h, gens, channels=c)
    logits = torch.logit(photos.double().clamp(1 / 512, 1 - 1 / 512))
    inverse = torch.linalg.inv(param.color.double())
    decorrelated = torch.einsum("ij,njhw->nihw", inverse, logits)
    with torch.no_grad():
        if isinstance(param, PixelParam):
            param.raw.copy_(decorrelated.float())
        elif isinstance(param, FFTParam):
            spectrum = torch.fft.rfft2(decorrelated * _FFT_DAMP, norm="backward") / param.scale.double()
            param.raw.copy_(torch.view_as_real(spectrum).float())
        else:
            raise ScopeError(f"--param {kind} cannot start from a photo")
    return param


def row_seed(seed: int, fingerprint: str, layer: str, photo_sha: str) -> int:
    text = f"scope-caricature|{int(seed)}|{fingerprint}|{layer}|{photo_sha}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def _evidence(a: torch.Tensor, r: torch.Tensor) -> tuple[float, float]:
    a, r = a.double().flatten(), r.double().flatten()
    na, nr = float(a.norm()), float(r.norm())
    cos = float((a * r).sum()) / (na * nr) if na > 0 and nr > 0 else math.nan
    return cos, (na / nr if nr > 0 else math.nan)


def caricatures(loaded, layers: list[str], photos: list[Photo], settings: CaricatureSettings, layouts: dict,
                progress=None) -> list[tuple[str, Caricature]]:
    """Optimize one caricature per (layer, photo); returns (layer, Caricature) pairs in row order."""
    settings.check()
    device = resolve_device(settings.device)
    module, pre = loaded.module, loaded.preprocess
    normalize = _Normalize(pre.mean, pre.std)
    rows = [(layer, ph) for ph in photos for layer in layers]
    was_training = module.training
    module.eval()
    module.to(device)
    out = []
    try:
        for b0 in range(0, len(rows), int(settings.batch)):
            out.extend(_batch(module, normalize, rows[b0:b0 + int(settings.batch)], settings, layouts, device,
                              loaded.fingerprint, progress, pre))
    finally:
        module.train(was_training)
    return out


def _batch(module, normalize, rows, settings, layouts, device, fingerprint, progress, pre):
    t0 = time.perf_counter()
    n, steps, spec = len(rows), int(settings.steps), tf.for_input_size(settings.transforms, int(pre.crop))
    photos = torch.stack([ph.pixels for _, ph in rows]).to(device)
    size = photos.shape[-1]
    gens = [torch.Generator().manual_seed(row_seed(settings.seed, fingerprint, layer, ph.sha256)) for layer, ph in rows]
    thetas = tf.affine_matrices(torch.stack([tf.draw(g, steps) for g in gens], dim=1), size, spec).to(device)
    param = param_from_photos(settings.param, photos.cpu()).to(device)
    layers = list(dict.fromkeys(layer for layer, _ in rows))
    objective = sum(DotCompare(layer, [i for i, (lay, _) in enumerate(rows) if lay == layer], n, settings.power)
                    for layer in layers)
    with LayerTap(module, layers) as tap:
        def views(x):
            return activation_views(tap(normalize(x)), layouts, layers)

        def loss_at(step):
            with torch.no_grad():
                reference = views(tf.warp(photos, thetas[step], spec.pad_value))
            acts = views(tf.warp(param(), thetas[step], spec.pad_value))
            acts.update({f"{layer}@reference": reference[layer] for layer in layers})
            return -objective(acts).sum()

        ascend(param, steps, settings.lr, loss_at, progress, n)
        with torch.no_grad():
            image = param().float()
            final, reference = views(image), views(photos)
    depth = int(pre.bit_depth)  # photos are finite: no NaN to replace
    pixels, originals = tf.to_pixels(image, depth), tf.to_pixels(photos, depth)
    seconds = (time.perf_counter() - t0) / n
    out = []
    for i, (layer, ph) in enumerate(rows):
        cos, ratio = _evidence(final[layer][i], reference[layer][i])
        if not (math.isfinite(cos) and math.isfinite(ratio) and torch.isfinite(image[i]).all()):
            raise ScopeError(f"caricature of {ph.name} at {layer}: the optimization diverged (NaN); try a smaller --lr")
        out.append((layer, Caricature(
            source_sha256=ph.sha256, source_name=ph.name, image=tf.stored_pixels(pixels[i]),
            photo=tf.stored_pixels(originals[i]), cosine=cos, magnitude_ratio=ratio, steps=steps, size=size,
            seed=row_seed(settings.seed, fingerprint, layer, ph.sha256), lr=float(settings.lr),
            power=float(settings.power), param=settings.param, time_s=seconds)))
    return out


def run_caricature(loaded, layers, photo_paths, settings: CaricatureSettings, output: str | None = None,
                   quiet: bool = True) -> dict:
    """`scope caricature`: caricatures of every photo at every layer, stored in the artifact; a summary."""
    settings.check()
    resolve_device(settings.device)
    infos = select_layers(loaded.module, loaded.preprocess.crop, layers, "name them with --layer")
    photos = load_photos(photo_paths, loaded.preprocess)
    names = [i.name for i in infos]
    layouts = {i.name: i.layout for i in infos}
    out = output or f"{loaded.name}.h5"
    t0 = time.perf_counter()
    with progress(len(names) * len(photos), "caricature", quiet=quiet, unit="image") as bar:
        made = caricatures(loaded, names, photos, settings, layouts, bar)
    params = settings.describe() | {"layers": names, "photos": [p.name for p in photos]}
    with ArtifactWriter(out, loaded.info(), "caricature", params) as w:
        for info in infos:
            w.ensure_layer(info.record())
        for layer in names:
            w.put(layer, "caricatures", [c for lay, c in made if lay == layer])
        w.add_timing("caricature_s", time.perf_counter() - t0)
    return {"output": out, "layers": names, "photos": [p.name for p in photos],
            "images": [{"layer": lay, "photo": c.source_name, "cosine": round(c.cosine, 4),
                        "magnitude_ratio": round(c.magnitude_ratio, 4)} for lay, c in made],
            "seconds": round(time.perf_counter() - t0, 2), "device": str(resolve_device(settings.device))}
