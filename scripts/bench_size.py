"""Bytes per unit of a shared artifact: a fixed collect + render recipe, then where the bytes went.

The recipe (issue 16): collect pretrained EfficientNet-Lite0 `_blocks.8` on the first 100 sample photos
(sorted by name, default settings), then render its units 0-15 at 224 px / 64 steps into the same file.
Prints the file's bytes, bytes per unit, and a breakdown: storage bytes of every dataset summed per
element (`layers/<layer>/<element>`, root elements by name) and, inside the big ones, per dataset.

    .venv/bin/python scripts/bench_size.py                       # the recipe, temporary file
    .venv/bin/python scripts/bench_size.py PHOTOS -o lite0.h5    # keep the file
    .venv/bin/python scripts/bench_size.py --measure lite0.h5    # only the breakdown of an existing file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict

import h5py

DEFAULT_PHOTOS = "/work/shared/data/imagenet-sample-500"


def scope(*args) -> None:
    """Run the scope CLI of this interpreter (the tree under test) and fail loudly."""
    done = subprocess.run([sys.executable, "-m", "scopecli", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"scope {' '.join(map(str, args))} failed:\n{done.stderr}")


def recipe(photos: str, out: str, model: str, layer: str, limit: int, units: str, steps: int, size: int) -> None:
    scope("collect", model, "--data", photos, "--layer", layer, "--limit", limit, "-o", out, "--quiet")
    scope("render", model, "--layer", layer, "-u", units, "--steps", steps, "--size", size, "-o", out, "--quiet")


def element_of(name: str) -> str:
    """`layers/<layer>/<element>` for per-layer datasets, the first path part otherwise."""
    parts = name.split("/")
    if parts[0] == "layers" and len(parts) >= 3:
        return "/".join(parts[:3])
    return parts[0]


def breakdown(path: str) -> dict:
    """Storage bytes per element and per dataset; units per layer and rendered units."""
    per_element: dict[str, int] = defaultdict(int)
    per_dataset: dict[str, int] = {}
    units: dict[str, int] = {}
    rendered = 0
    names: dict[int, list[str]] = defaultdict(list)  # object address -> its names (hard links share data)
    with h5py.File(path, "r") as f:
        def visit(name, _link):
            nonlocal rendered
            obj = f[name]
            if isinstance(obj, h5py.Dataset):
                names[h5py.h5o.get_info(obj.id).addr].append(name)
                if name.endswith("renders/unit"):
                    rendered += obj.shape[0] if obj.ndim else 0
            elif isinstance(obj, h5py.Group) and name.count("/") == 1 and name.startswith("layers/"):
                units[obj.attrs.get("name", name)] = int(obj.attrs.get("units", 0))

        f.visititems_links(visit)
        for addr, same in names.items():  # each stored object counted once, under its first name
            size = f[same[0]].id.get_storage_size()
            per_element[element_of(same[0])] += size
            per_dataset[" = ".join(same)] = size
    data = sum(per_dataset.values())
    return {"file_bytes": os.path.getsize(path), "dataset_bytes": data,
            "overhead_bytes": os.path.getsize(path) - data, "units": units, "rendered": rendered,
            "elements": dict(sorted(per_element.items(), key=lambda kv: -kv[1])),
            "datasets": dict(sorted(per_dataset.items(), key=lambda kv: -kv[1]))}


def report(b: dict, top: int) -> None:
    total = b["file_bytes"]
    n_units = sum(b["units"].values())
    print(f"file: {total:,} bytes; {n_units} units collected ({total / max(n_units, 1):,.0f} bytes/unit), "
          f"{b['rendered']} rendered; HDF5 overhead {b['overhead_bytes']:,}")
    print(f"{'element':44s} {'bytes':>12s} {'share':>7s}")
    for name, size in b["elements"].items():
        print(f"{name:44s} {size:12,d} {size / total:7.1%}")
    print(f"\nlargest datasets:")
    for name, size in list(b["datasets"].items())[:top]:
        print(f"  {name:60s} {size:12,d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="?", default=DEFAULT_PHOTOS)
    ap.add_argument("-o", "--out", default=None, help="keep the artifact here (default: a temporary file)")
    ap.add_argument("--measure", default=None, metavar="FILE", help="only break down an existing artifact")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--layer", default="_blocks.8")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--units", default="0:16")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--top", type=int, default=12, help="largest datasets listed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.measure:
        path, tmp = args.measure, None
    else:
        tmp = None if args.out else tempfile.TemporaryDirectory(prefix="scope-size-")
        path = args.out or os.path.join(tmp.name, "recipe.h5")
        if os.path.exists(path):
            sys.exit(f"{path} exists; pick another -o")
        recipe(args.photos, path, args.model, args.layer, args.limit, args.units, args.steps, args.size)
    b = breakdown(path)
    if args.json:
        print(json.dumps(b, indent=1))
    else:
        report(b, args.top)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
