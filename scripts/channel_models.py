"""Real pretrained models that do not eat 8-bit RGB, for manual checks and closing-note contact sheets, and the
data they read, made from a folder of photos.

No grayscale or multi-channel ImageNet model installs offline, so these are EfficientNet-Lite0 (ImageNet weights,
the [demo] extra) with its stem convolution rewritten; on the data below each computes exactly what Lite0 computes
on the photo, so its units are Lite0's real units:

- `channel_models:gray_lite0`: 1 channel. The stem's weights summed over R, G, B: on a gray photo (R = G = B = the
  gray value) it is Lite0 on that photo. Data: 16-bit grayscale PNGs.
- `channel_models:five_lite0`: 5 channels (R, G, B, R', B'), the stem reading R and B half from channels 0/2 and
  half from 3/4: on (R, G, B, R, B) data it is Lite0. Data: 16-bit 5 x H x W .npy stacks.

    PYTHONPATH=scripts .venv/bin/scope collect channel_models:gray_lite0 --data DIR --bit-depth 16 ...
    .venv/bin/python scripts/channel_models.py --photos ../shared/data/imagenet-sample-500 --out /tmp/chdata --limit 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _lite0():
    from scopecli.model import resolve_model

    return resolve_model("efficientnet_lite0").module


def _restem(model, weight: torch.Tensor):
    stem = model._conv_stem
    new = torch.nn.Conv2d(weight.shape[1], stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                          bias=stem.bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if stem.bias is not None:
            new.bias.copy_(stem.bias)
    model._conv_stem = new
    return model


def gray_lite0():
    model = _lite0()
    w = model._conv_stem.weight.detach()
    return _restem(model, w.sum(dim=1, keepdim=True))


def five_lite0():
    model = _lite0()
    w = model._conv_stem.weight.detach()
    return _restem(model, torch.cat([w[:, :1] / 2, w[:, 1:2], w[:, 2:3] / 2, w[:, :1] / 2, w[:, 2:3] / 2], dim=1))


def make_data(photos: Path, out: Path, limit: int) -> None:
    """16-bit gray PNGs (out/gray) and 16-bit (R,G,B,R,B) stacks (out/five) of the first `limit` photos, shorter
    side 256 (the models' resize), with the photos' labels file copied next to each."""
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:limit]
    (out / "gray").mkdir(parents=True, exist_ok=True)
    (out / "five").mkdir(parents=True, exist_ok=True)
    for p in files:
        with Image.open(p) as im:
            im = im.convert("RGB")
            s = 256 / min(im.size)
            im = im.resize((max(256, round(im.width * s)), max(256, round(im.height * s))), Image.Resampling.BICUBIC)
            rgb = np.asarray(im).astype(np.uint32) * 257  # 8 -> 16 bits exactly (v * 257)
        gray = rgb.mean(axis=2).round().astype(np.uint16)
        Image.fromarray(gray).save(out / "gray" / (p.stem + ".png"))
        five = np.stack([rgb[..., 0], rgb[..., 1], rgb[..., 2], rgb[..., 0], rgb[..., 2]]).astype(np.uint16)
        np.save(out / "five" / (p.stem + ".npy"), five)
    labels = photos / "labels.tsv"
    if labels.exists():
        rows = labels.read_text().splitlines()
        stems = {p.stem for p in files}
        for sub, ext in (("gray", ".png"), ("five", ".npy")):
            kept = [r for r in rows[1:] if Path(r.split("\t")[0]).stem in stems]
            text = [rows[0]] + ["\t".join([Path(r.split("\t")[0]).stem + ext] + r.split("\t")[1:]) for r in kept]
            (out / f"{sub}_labels.tsv").write_text("\n".join(text) + "\n")
    print(f"wrote {len(files)} gray PNGs and 5-channel stacks under {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=200)
    a = ap.parse_args()
    make_data(Path(a.photos), Path(a.out), a.limit)
