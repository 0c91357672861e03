"""Neurons versus learned features: per layer, the median top-8 label purity and lift of the layer's channels
and of every unit space fitted on it (PCA, NMF, sparse autoencoder, imported), from a labelled artifact.

Medians and means over the units. Purity: the share of a unit's top-8 example images that carry its most common label; lift: that class's
shrunk lift over its base rate (`lift_score`, 1 = no preference). Only examples above the unit's median
count, and units firing on fewer than 4 images are left out (and counted); see
`scopecli/compare/monosemanticity.py`. Also prints each space's fit quality (held-out R², dead fraction).

    .venv/bin/python scripts/monosemanticity.py ARTIFACT.h5 [--layers L1,L2] [--labels FILE] [--json]

`--labels FILE` (file -> label, as `collect --labels` reads) measures purity under other labels than the
collected ones, e.g. superclasses (`scripts/imagenet_superclasses.py`) when every class has one image.
"""

from __future__ import annotations

import argparse
import json
import sys

from scopecli.artifact import open_artifact
from scopecli.compare.monosemanticity import TOP, labels_from_file, layer_purity


def rows_of(art, layers: list[str] | None, labels=None) -> list[dict]:
    spaces = art.spaces
    bases = layers or list(dict.fromkeys(s["base"] for s in spaces))
    out = []
    for base in bases:
        for name, sp in [(base, None)] + [(s["name"], s) for s in spaces if s["base"] == base]:
            pur = layer_purity(art, name, labels=labels)
            q = sp["quality"] if sp else {}
            out.append({"base": base, "layer": name, "kind": sp["method"] if sp else "neurons",
                        "units": art.layer(name).units, "r2": q.get("r2"), "explained_variance": q.get("explained_variance"),
                        "dead_fraction": q.get("dead_fraction"), "fit_seconds": q.get("fit_seconds"),
                        **({k: v for k, v in pur.to_json().items() if k != "layer"} if pur else {})})
    return out


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--layers", help="base layers (default: every layer with a unit space)")
    ap.add_argument("--labels", help="file -> label mapping to use instead of the collected labels")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with open_artifact(args.artifact) as art:
        labels = labels_from_file(art, args.labels) if args.labels else None
        have = labels if labels is not None else art.image_labels()
        if have is None or not have[1] or not (have[0] >= 0).any():
            print(f"{args.artifact}: its images have no labels; collect with --labels, or pass --labels", file=sys.stderr)
            return 2
        rows = rows_of(art, args.layers.split(",") if args.layers else None, labels)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = (f"{'layer':32} {'kind':8} {'units':>5} {'R²':>6} {'expl.var':>8} {'dead':>6} {'fit s':>7} "
            f"{'purity@' + str(TOP):>9} {'lift':>6} {'mean pur.':>9} {'mean lift':>9} {'left out':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['layer']:32} {r['kind']:8} {r['units']:>5} {_fmt(r['r2'], '.3f'):>6} "
              f"{_fmt(r['explained_variance'], '.1%'):>8} {_fmt(r['dead_fraction'], '.1%'):>6} "
              f"{_fmt(r['fit_seconds'], '.1f'):>7} {_fmt(r.get('median_purity'), '.3f'):>9} "
              f"{_fmt(r.get('median_lift'), '.2f'):>6} {_fmt(r.get('mean_purity'), '.3f'):>9} "
              f"{_fmt(r.get('mean_lift'), '.2f'):>9} {str(r.get('left_out', '-')) + '/' + str(r['units']):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
