"""How good are an artifact's dataset examples? Gray padding, distinct photos, and what units fire on.

For each layer of one or more artifacts (older scope versions too: it reads only the examples, the
image table and, when present, the label profiles) it prints:
  gray        mean fraction of a top-k patch that is flat padding gray (all channels within 2 of 127,
              the value scope pads with), and the share of patches more than a quarter gray;
  distinct    median (and minimum) number of distinct source photos among each unit's top 8: source
              groups when the file records them (`collect --groups`), else the photo file name with a
              trailing view tag (_tl, _c, _mirror, ...) removed, else the file itself;
  lift        the five units with the highest (shrunk) label lift over all their stored top examples (the
              collect's --top-k), with the class.

    .venv/bin/python scripts/report_examples.py scope-demo/demo.h5
    .venv/bin/python scripts/report_examples.py lite0-500.h5 --json report.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import h5py
import numpy as np

PAD = 127
VIEW_TAG = re.compile(r"_(full|tl|tr|bl|br|c|mirror)(?=\.[A-Za-z]+$)")


def _source_names(path: str, paths: list[str]) -> list[str]:
    """Each image's source photo: the recorded group, else the name without the demo's view tag."""
    with h5py.File(path, "r") as f:
        ds = f.get("dataset")
        if ds is not None and "source" in ds and "source_names" in ds:
            src = ds["source"][()]
            names = [n.decode() if isinstance(n, bytes) else n for n in ds["source_names"][()]]
            return [names[s] if s >= 0 else p for s, p in zip(src.tolist(), paths)]
    return [VIEW_TAG.sub("", p) for p in paths]


def gray_fraction(patch: np.ndarray) -> float:
    p = np.asarray(patch, dtype=np.int16)
    return float((np.abs(p - PAD) <= 2).all(axis=-1).mean())


def layer_report(art, path: str, layer: str, n_top: int = 8) -> dict:
    ex = art.examples(layer, "top")
    if ex is None:
        return {"layer": layer, "examples": False}
    paths = art.dataset.paths
    sources = _source_names(path, paths)
    grays, distinct = [], []
    for u in range(len(ex.units)):
        idx = [int(i) for i in ex.image_index[u][:n_top] if i >= 0]
        if not idx:
            continue
        distinct.append(len({sources[i] for i in idx}))
        for j in range(len(idx)):
            grays.append(gray_fraction(ex.patches[u][j]))
    g = np.asarray(grays)
    out = {"layer": layer, "units": int(len(ex.units)), "patches": int(len(g)),
           "gray_mean": float(g.mean()) if len(g) else None,
           "over_quarter_gray": float((g > 0.25).mean()) if len(g) else None,
           "distinct_median": float(np.median(distinct)) if distinct else None,
           "distinct_min": int(min(distinct)) if distinct else None}
    lifts = []
    if hasattr(art, "has_labels") or art.dataset.class_names:
        for u in ex.units.tolist():
            try:
                prof = art.unit(f"{layer}:{u}").label_profile
            except AttributeError:
                break
            if prof.rows:
                from scopecli.artifact.elements.strongest import lift_score

                best = max(prof.rows, key=lambda r: lift_score(r.count, prof.images[0], r.base_rate))
                lifts.append((lift_score(best.count, prof.images[0], best.base_rate), u, best, prof.images[0]))
    lifts.sort(key=lambda t: (-t[0], t[1]))
    out["top_lift"] = [{"unit": u, "class": r.class_name, "count": r.count, "of": n, "fraction": round(r.fraction, 3),
                        "base_rate": round(r.base_rate, 4), "lift": round(r.lift, 2), "shrunk_lift": round(s, 2)}
                       for s, u, r, n in lifts[:5]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--top", type=int, default=8, help="examples per unit to look at (default 8)")
    ap.add_argument("--json", help="also write the report as JSON here")
    args = ap.parse_args()
    from scopecli.artifact import open_artifact

    report = []
    for path in args.artifacts:
        with open_artifact(path) as art:
            for layer in art.layers:
                r = layer_report(art, path, layer, args.top) | {"artifact": str(path)}
                report.append(r)
                if r.get("examples") is False:
                    print(f"{Path(path).name}  {layer}: no examples")
                    continue
                print(f"{Path(path).name}  {layer}: gray {100 * r['gray_mean']:.1f}% of patch area, "
                      f"{100 * r['over_quarter_gray']:.0f}% of patches > 1/4 gray; distinct photos per top "
                      f"{args.top}: median {r['distinct_median']:g}, min {r['distinct_min']} ({r['units']} units)")
                for t in r["top_lift"]:
                    print(f"    unit {t['unit']:>4}  {t['class']:<28} {t['count']} of its top {t['of']}  "
                          f"base {100 * t['base_rate']:.1f}%  lift {t['lift']:.1f} (shrunk {t['shrunk_lift']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
