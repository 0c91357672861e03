"""Cut a flat folder of labelled photos (one per class, like ../shared/data/imagenet-sample-500) into views, so
every class has several images: four corner crops, a centre crop and the mirrored photo, as `scope demo` does,
with a labels file that keeps the class-index column (so the label is the model's output index) and a groups
file (one source group per photo, for `--groups`).

    .venv/bin/python scripts/photo_views.py ../shared/data/imagenet-sample-500 /tmp/views
    scope collect efficientnet_lite0 --data /tmp/views/images --labels /tmp/views/labels.tsv --groups /tmp/views/groups.tsv ...
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image

from scopecli.data.demo_photos import _views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--with-full", action="store_true", help="also keep the whole photo (7 views instead of 6)")
    a = ap.parse_args()
    with open(a.photos / "labels.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    header, rows = rows[0], rows[1:]
    col = {h: i for i, h in enumerate(header)}
    images = a.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels, groups = ["file\tclass_index\tclass_name"], ["file\tgroup"]
    for r in rows:
        name = r[col["file"]]
        with Image.open(a.photos / name) as im:
            img = im.convert("RGB")
        stem = Path(name).stem
        for tag, view in _views(img):
            if tag == "full" and not a.with_full:
                continue
            out = f"{stem}_{tag}.jpg"
            view.save(images / out, quality=92)
            labels.append(f"{out}\t{r[col['class_index']]}\t{r[col['class_name']]}")
            groups.append(f"{out}\t{stem}")
    (a.out / "labels.tsv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (a.out / "groups.tsv").write_text("\n".join(groups) + "\n", encoding="utf-8")
    print(f"wrote {len(labels) - 1} views of {len(rows)} photos to {images}")


if __name__ == "__main__":
    main()
