"""A contact sheet of unit-space latents (or channels): one row per unit with its render and its top examples.

Picks units by their top-8 label lift (`--pick lift`, the most monosemantic first; units firing on fewer than
4 images are skipped) or takes `--units`. Each row: `layer:unit`, the top class with purity and lift, the
first render (if any), then the top `--examples` patches with their class names.

    .venv/bin/python scripts/spaces_contact_sheet.py A.h5 --layer _blocks.14@sae768 --pick lift --n 8 -o sheet.png
    .venv/bin/python scripts/spaces_contact_sheet.py A.h5 --layer _blocks.14@sae768 --units 3,17 -o sheet.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image, ImageDraw

from scopecli.artifact import open_artifact
from scopecli.artifact.elements.strongest import base_rates
from scopecli.compare.drawing import font
from scopecli.compare.monosemanticity import labels_from_file, unit_purity

from _sheet import stack_bands  # scripts/ is on sys.path when a script runs

CELL = 112
LABEL_W = 230


def ranked_units(art, layer: str, labels=None) -> list[tuple[int, float, float, str]]:
    """(unit, purity, lift, top class) of every counted unit, highest lift first."""
    labels, names = labels if labels is not None else art.image_labels()
    base = base_rates(labels, len(names))
    ex = art.examples(layer, "top")
    st = art.stats(layer)
    p50 = {int(u): float(q[0]) for u, q in zip(st.units, st.quantiles)} if st is not None else {}
    out = []
    for row, u in enumerate(ex.units):
        res = unit_purity(labels, base, ex.image_index[row], ex.score[row], p50.get(int(u), 0.0))
        if res is None:
            continue
        ii = ex.image_index[row][:8]
        lab = labels[ii[ii >= 0]]
        lab = lab[lab >= 0]
        top = names[int(np.bincount(lab).argmax())] if len(lab) else "-"
        out.append((int(u), res[0], res[1], top))
    return sorted(out, key=lambda t: (-t[2], -t[1], t[0]))


def _fit(img: np.ndarray | None) -> Image.Image:
    tile = Image.new("RGB", (CELL, CELL), (235, 235, 235))
    if img is not None:
        im = Image.fromarray(img)
        im.thumbnail((CELL, CELL), Image.Resampling.LANCZOS if max(im.size) > CELL else Image.Resampling.NEAREST)
        if max(im.size) < CELL:
            scale = CELL / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.NEAREST)
        tile.paste(im, ((CELL - im.width) // 2, (CELL - im.height) // 2))
    return tile


def sheet(art, layer: str, rows: list[tuple[int, float, float, str]], n_examples: int, title: str,
          labels=None) -> Image.Image:
    _, names = art.image_labels()
    coarse, coarse_names = labels if labels is not None else (None, [])
    table = art.dataset
    width = LABEL_W + (1 + n_examples) * (CELL + 4) + 8
    height = 28 + len(rows) * (CELL + 18)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    draw.text((8, 8), title, fill="black", font=font())
    for i, (u, purity, lift, top) in enumerate(rows):
        y = 28 + i * (CELL + 18)
        view = art.unit(layer, u)
        draw.text((8, y + 4), f"{layer}:{u}", fill="black", font=font())
        draw.text((8, y + 20), f"top-8: {top}", fill="black", font=font())
        draw.text((8, y + 36), f"purity {purity:.2f}  lift {lift:.1f}", fill="black", font=font())
        st = view.stats
        if st:
            draw.text((8, y + 52), f"max {st.get('max', float('nan')):.3g}  frac>0 {st.get('frac_pos', 0):.1%}",
                      fill=(90, 90, 90), font=font())
        x = LABEL_W
        render = view.renders[0].image if view.renders else None
        out.paste(_fit(render), (x, y))
        draw.text((x, y + CELL + 2), "render" if render is not None else "no render", fill=(90, 90, 90), font=font())
        for j, e in enumerate(view.examples.get("top", [])[:n_examples]):
            x = LABEL_W + (j + 1) * (CELL + 4)
            out.paste(_fit(e.patch), (x, y))
            lab = int(table.label[e.image_index]) if table is not None and e.image_index >= 0 else -1
            cls = names[lab] if 0 <= lab < len(names) else "-"
            if coarse is not None and e.image_index >= 0 and coarse[e.image_index] >= 0:
                cls = f"{coarse_names[coarse[e.image_index]][:9]}/{cls}"
            draw.text((x, y + CELL + 2), cls[:19], fill=(60, 60, 60), font=font())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--layer", action="append", required=True, help="repeatable: one block of rows per layer")
    ap.add_argument("--units", help="comma-separated units (default: --pick)")
    ap.add_argument("--pick", default="lift", choices=["lift"])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--labels", help="file -> label mapping to rank by instead of the collected labels")
    ap.add_argument("--print-units", action="store_true", help="only print the picked units (for scope render)")
    ap.add_argument("-o", "--out")
    args = ap.parse_args(argv)
    with open_artifact(args.artifact) as art:
        labels = labels_from_file(art, args.labels) if args.labels else None
        blocks = []
        for layer in args.layer:
            ranked = ranked_units(art, layer, labels)
            if args.units:
                want = [int(u) for u in args.units.split(",")]
                by = {r[0]: r for r in ranked}
                rows = [by.get(u, (u, float("nan"), float("nan"), "-")) for u in want]
            else:
                rows = ranked[: args.n]
            if args.print_units:
                print(f"{layer} {','.join(str(r[0]) for r in rows)}")
                continue
            what = "units " + args.units if args.units else f"the {len(rows)} units with the highest top-8 label lift"
            blocks.append(sheet(art, layer, rows, args.examples, f"{layer}: {what}", labels))
        if args.print_units:
            return 0
    if not args.out:
        print("give -o SHEET.png", file=sys.stderr)
        return 2
    full = stack_bands(blocks)
    full.save(args.out)
    print(f"wrote {args.out} ({full.width}x{full.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
