"""Coarse labels for ImageNet images from WordNet 3.0: each class's first ancestor among ~25 superclasses.

Why: with one image per class (the 500-image sample), a unit's top-8 images are 8 different classes, so
class-label purity is 1/8 for every unit and says nothing; superclasses (dog, bird, vehicle, food, ...)
have many images each and make purity and lift informative. ImageNet wnids are WordNet noun offsets
(`n01440764` -> 01440764 in `data.noun`); the superclass is the first one found walking up hypernyms,
checked in the order of SUPER (specific before general).

    python scripts/imagenet_superclasses.py LABELS.tsv DATA.NOUN > superclasses.tsv
    # LABELS.tsv: file, class index, wnid, class name (the sample folder's); DATA.NOUN: WordNet 3.0's
    # (Debian: package wordnet-base, /usr/share/wordnet/data.noun)
"""

from __future__ import annotations

import csv
import sys

SUPER = [  # (name, WordNet 3.0 noun offset), most specific first
    ("dog", "02084071"), ("cat", "02120997"), ("bird", "01503061"), ("fish", "02512053"),
    ("reptile", "01661091"), ("amphibian", "01627424"), ("insect", "02159955"), ("arachnid", "01769347"),
    ("crustacean", "01976957"), ("invertebrate", "01905661"), ("primate", "02469914"), ("mammal", "01861778"),
    ("person", "00007846"), ("fungus", "12992868"), ("plant", "00017222"), ("plant", "13086908"),
    ("food", "00021265"), ("food", "07555863"), ("vehicle", "04524313"),
    ("musical instrument", "03800933"), ("clothing", "03051540"), ("furniture", "03405725"),
    ("container", "03094503"), ("structure", "04341686"), ("device", "03183080"), ("implement", "03563967"),
    ("covering", "03122748"), ("geological formation", "09287968"), ("artifact", "00021939"),
]


def hypernyms(data_noun: str) -> dict[str, list[str]]:
    """offset -> hypernym offsets (`@` and `@i` pointers) of every noun synset."""
    out = {}
    with open(data_noun, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            f = line.split()
            off, n_words = f[0], int(f[3], 16)
            i = 4 + 2 * n_words
            n_ptr = int(f[i])
            ptrs = f[i + 1: i + 1 + 4 * n_ptr]
            out[off] = [ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] in ("@", "@i") and ptrs[j + 2] == "n"]
    return out


def superclass(offset: str, up: dict[str, list[str]]) -> str:
    ancestors, todo = set(), [offset]
    while todo:
        o = todo.pop()
        if o not in ancestors:
            ancestors.add(o)
            todo.extend(up.get(o, []))
    return next((name for name, off in SUPER if off in ancestors), "other")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    up = hypernyms(argv[1])
    w = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    w.writerow(["file", "class_name"])
    with open(argv[0], encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    for r in rows[1:]:
        w.writerow([r[0], superclass(r[2].lstrip("n"), up)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
