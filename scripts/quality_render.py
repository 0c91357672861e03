"""Quality check for `scope render`: do visualizations beat the strongest real photo?

Renders 8 units each of an early, a middle and a late block of pretrained EfficientNet-Lite0 (all in one
batch), computes each unit's maximum spatial-mean activation over a folder of photos, prints the ratio
per unit and the fraction of units whose visualization exceeds the photo maximum, and writes a contact
sheet PNG (one row per layer; each tile: rendering, then the unit's best photo).

    .venv/bin/python scripts/quality_render.py --photos /work/shared/data/imagenet-sample-500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from scopecli.model import LayerTap, resolve_model
from scopecli.render import RenderSettings, plan_targets, render_units


def photo_maxima(loaded, layers, folder, batch=50):
    """{layer: (max spatial-mean per unit [C], argmax image path per unit)} over the photos."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    transform = loaded.preprocess.pil_transform()
    best = {}
    arg = {}
    with torch.no_grad(), LayerTap(loaded.module, layers) as tap:
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk])
            acts = tap(loaded.preprocess.normalize(x))
            for layer, a in acts.items():
                means = a.float().flatten(2).mean(2)  # (n, C)
                m, idx = means.max(0)
                if layer not in best:
                    best[layer], arg[layer] = m, [chunk[j] for j in idx.tolist()]
                else:
                    better = m > best[layer]
                    arg[layer] = [chunk[j] if b else old for j, b, old in zip(idx.tolist(), better.tolist(), arg[layer])]
                    best[layer] = torch.maximum(best[layer], m)
    return {k: (best[k].numpy(), arg[k]) for k in best}, len(files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", default="/work/shared/data/imagenet-sample-500")
    ap.add_argument("--layers", default="_blocks.2,_blocks.8,_blocks.15")
    ap.add_argument("--per-layer", type=int, default=8)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--param", default="fft")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/scope_quality")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    loaded = resolve_model("efficientnet_lite0")
    layers = args.layers.split(",")
    t0 = time.perf_counter()
    maxima, n_photos = photo_maxima(loaded, layers, args.photos)
    print(f"photo maxima over {n_photos} photos: {time.perf_counter() - t0:.1f}s", flush=True)

    picks = {}
    for layer in layers:
        c = len(maxima[layer][0])
        picks[layer] = [i * c // args.per_layer for i in range(args.per_layer)]
    targets = plan_targets(picks)
    settings = RenderSettings(steps=args.steps, size=args.size, param=args.param, batch=len(targets), device="cpu")
    t0 = time.perf_counter()
    result = render_units(loaded, targets, settings)
    seconds = time.perf_counter() - t0
    print(f"rendered {len(result.records)} units, {args.steps} steps at {args.size}px: {seconds:.0f}s", flush=True)

    rows, tiles, beat = [], {}, 0
    for layer, rec in result.records:
        top = float(maxima[layer][0][rec.unit])
        ratio = rec.act_final / top if top > 0 else float("nan")
        beat += rec.act_final > top
        rows.append({
            "layer": layer, "unit": rec.unit, "act_final": rec.act_final, "act_robust": rec.act_robust,
            "photo_max": top, "ratio": ratio, "trace": [float(v) for v in rec.act_trace],
            "best_photo": maxima[layer][1][rec.unit].name,
        })
        tiles.setdefault(layer, []).append((rec, maxima[layer][1][rec.unit], ratio))
        print(f"{layer:>10}:{rec.unit:<4} render {rec.act_final:8.3f}  robust {rec.act_robust:8.3f}  "
              f"photo max {top:8.3f}  ratio {ratio:6.2f}", flush=True)
    frac = beat / max(1, len(result.records))
    print(f"fraction of units whose visualization exceeds the photo maximum: {beat}/{len(result.records)} = {frac:.2f}")
    for target, why in result.skipped:
        print("skipped:", why)

    # Contact sheet: per layer one row of (render over its best photo) tiles.
    s = args.size
    half = s // 2
    sheet = Image.new("RGB", (args.per_layer * (s + 4), len(layers) * (s + half + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    transform = loaded.preprocess.pil_transform()
    for r, layer in enumerate(layers):
        for c, (rec, photo, ratio) in enumerate(tiles.get(layer, [])):
            x, y = c * (s + 4), r * (s + half + 18)
            sheet.paste(Image.fromarray(rec.image), (x, y))
            ph = (transform(Image.open(photo).convert("RGB")).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            sheet.paste(Image.fromarray(ph).resize((half, half)), (x, y + s))
            draw.text((x + half + 4, y + s + 2), f"{layer}:{rec.unit}", fill="black")
            draw.text((x + half + 4, y + s + 16), f"x{ratio:.2f} of photo max", fill="black")
    sheet.save(out / "contact_sheet.png")
    (out / "quality.json").write_text(json.dumps({"fraction_beating_photo_max": frac, "seconds": seconds,
                                                  "settings": settings.describe(), "units": rows}, indent=1))
    print(f"wrote {out / 'contact_sheet.png'}")


if __name__ == "__main__":
    main()
