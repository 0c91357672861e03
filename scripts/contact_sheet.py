"""One PNG to look at many units at once: per unit a column with its render(s) on top and its top dataset
examples below (heatmap overlay and ring, as `scope show` draws them).

Closing notes and reviews need to *look* at renders and examples of a whole layer, or of two artifacts
side by side; a gallery is many clicks. Several `A.h5:LAYER` sources stack as row bands.

    .venv/bin/python scripts/contact_sheet.py vit.h5:encoder.layers.encoder_layer_5 --units 0:8 -o sheet.png
    .venv/bin/python scripts/contact_sheet.py old.h5:_blocks.8 new.h5:_blocks.8 --units 0:8 --examples 0 -o cmp.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from _sheet import stack_bands  # scripts/ is on sys.path when a script runs

CELL = 112
PAD = 4
LABEL_H = 14


def _fit(pixels: np.ndarray, side: int = CELL) -> Image.Image:
    img = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    scale = side / max(img.width, img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), (235, 235, 235))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def _path(render) -> str:
    """' path .31/.13!' (path similarity / random unit's, ! when flagged) where measured (scope faithfulness)."""
    sim = getattr(render, "path_similarity", None)
    if sim is None:
        return ""
    return f" path {sim:.2f}/{render.path_baseline:.2f}" + ("!" if render.path_flagged else "")


def band(path: str, layer: str, units: list[int], n_examples: int, heat: bool) -> tuple[Image.Image, str]:
    from scopecli.core import heatmaps
    from scopecli.artifact import open_artifact
    from scopecli.artifact.display import DisplaySpec, composite, planes

    with open_artifact(path) as art:
        rec = art.layer(layer)
        spec = DisplaySpec.of(art.model)  # N channels: the false-colour composite, then each channel in gray
        per_channel = spec.channels not in (1, 3) or bool(spec.rgb)
        cols = []
        for u in units:
            view = art.unit(f"{layer}:{u}")
            renders = (getattr(view, "renders", None) or [])[:1]
            cells = [(_fit(composite(r.image, spec)), f"{u}: act {r.act_final:.3g}" + _path(r)) for r in renders]
            if per_channel:
                cells += [(_fit(p), f"  {name}") for r in renders for p, name in zip(planes(r.image), spec.names)]
            if not cells:
                cells = [(Image.new("RGB", (CELL, CELL), (250, 250, 250)), f"{u}: no render")]
            ex = (getattr(view, "examples", None) or {}).get("top", [])
            for e in ex[:n_examples]:
                if e.patch is None:
                    continue
                pix = composite(e.patch, spec)
                if heat and e.heatmap is not None:
                    pix = heatmaps.overlay(pix, e, rec)
                cls = ""
                if art.dataset is not None and art.dataset.class_names and e.image_index >= 0:
                    lab = int(art.dataset.label[e.image_index])
                    cls = art.dataset.class_names[lab] if lab >= 0 else ""
                cells.append((_fit(pix), (cls or Path(e.image_path or "").stem)[:18]))
            cols.append(cells)
        title = f"{Path(path).name}  {layer}  ({art.model_info.get('name', '') if hasattr(art, 'model_info') else ''})"
    rows = max(len(c) for c in cols) if cols else 1
    w = PAD + len(cols) * (CELL + PAD)
    h = LABEL_H + PAD + rows * (CELL + LABEL_H + PAD)
    sheet = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(sheet)
    d.text((PAD, 1), title, fill=(20, 20, 120))
    for i, cells in enumerate(cols):
        for j, (img, text) in enumerate(cells):
            x, y = PAD + i * (CELL + PAD), LABEL_H + PAD + j * (CELL + LABEL_H + PAD)
            sheet.paste(img, (x, y))
            d.text((x, y + CELL + 1), text, fill="black")
    return sheet, title


def main() -> None:
    from scopecli.core.units import parse_units

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="+", help="ARTIFACT:LAYER")
    ap.add_argument("--units", default="0:8")
    ap.add_argument("--examples", type=int, default=4, help="top examples per unit (default 4)")
    ap.add_argument("--no-heat", action="store_true", help="patches without heatmap overlay")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    from scopecli.artifact import open_artifact

    bands = []
    for src in args.sources:
        path, _, layer = src.partition(":")
        with open_artifact(path) as art:
            n = art.layer(layer).units
        bands.append(band(path, layer, parse_units(args.units, n), args.examples, not args.no_heat)[0])
    sheet = stack_bands(bands)
    sheet.save(args.out)
    print(f"{args.out}: {sheet.width}x{sheet.height}")


if __name__ == "__main__":
    main()
