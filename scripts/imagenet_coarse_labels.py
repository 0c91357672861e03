"""Coarse labels for ImageNet-1k photos: a labels file scope's label profiles can say something with.

A sample with one photo per class (such as 500 photos of 500 classes) gives every class a base rate of
one image, so every label lift is the same and a profile says nothing. ImageNet's class indices are
ordered by WordNet, so contiguous index ranges form broad groups (dogs 151-268, birds, snakes, insects,
vehicles are spread out and stay "object"). This script maps a labels file whose second column is the
ImageNet class index (the sample folder's `labels.tsv`: file, class index, wnid, class name) to
`file<TAB>group`, for `scope collect --labels`.

    .venv/bin/python scripts/imagenet_coarse_labels.py ../shared/data/imagenet-sample-500/labels.tsv -o coarse.tsv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

# (first index, last index, group), from the ImageNet-1k class list's WordNet order
RANGES = [
    (0, 6, "fish"), (7, 24, "bird"), (25, 32, "amphibian"), (33, 68, "reptile"), (69, 79, "arthropod"),
    (80, 100, "bird"), (101, 106, "mammal (other)"), (107, 126, "sea invertebrate"), (127, 146, "bird"),
    (147, 150, "marine mammal"), (151, 268, "dog"), (269, 280, "wild canid"), (281, 293, "cat"),
    (294, 299, "mammal (other)"), (300, 326, "insect"), (327, 329, "sea invertebrate"),
    (330, 338, "small mammal"), (339, 353, "hoofed mammal"), (354, 364, "mammal (other)"), (365, 384, "primate"),
    (385, 388, "mammal (other)"), (389, 397, "fish"), (398, 923, "object"), (924, 969, "food"),
    (970, 980, "landscape"), (981, 983, "person"), (984, 998, "plant or fungus"), (999, 999, "object"),
]


def group_of(index: int) -> str:
    for lo, hi, name in RANGES:
        if lo <= index <= hi:
            return name
    raise ValueError(f"class index {index} is outside ImageNet-1k (0-999)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", help="TSV: file, ImageNet class index, ...")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    rows = list(csv.reader(Path(args.labels).read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    if rows and not rows[0][1].strip().isdigit():
        rows = rows[1:]
    out = ["file\tlabel"] + [f"{r[0]}\t{group_of(int(r[1]))}" for r in rows if len(r) >= 2]
    Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    counts: dict[str, int] = {}
    for line in out[1:]:
        g = line.split("\t")[1]
        counts[g] = counts.get(g, 0) + 1
    print(f"{len(out) - 1} files -> {args.out}; " + ", ".join(f"{g} {n}" for g, n in sorted(counts.items(), key=lambda t: -t[1])))


if __name__ == "__main__":
    main()
