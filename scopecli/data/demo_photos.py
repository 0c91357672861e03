"""Openly licensed photos for `scope demo`, taken from scikit-image's bundled sample data.

They install from the package registry with the `[demo]` extra, so the demo runs offline. A dozen
photos are too few for dataset examples, so each one is also cut into overlapping crops (and a mirror
image): the demo's "dataset" is those views, labelled by the photo they come from, and grouped by it
(a source group per photo), so a unit's examples come from different photos, not five crops of one.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from scopecli.core.errors import ScopeError

# file in skimage/data, label, credit and license (from scikit-image's documentation)
PHOTOS = [
    ("astronaut.png", "astronaut", "NASA, public domain"),
    ("chelsea.png", "cat", "Stefan van der Walt, CC0"),
    ("coffee.png", "coffee", "Rachel Michetti, CC0"),
    ("rocket.jpg", "rocket", "SpaceX, public domain"),
    ("hubble_deep_field.jpg", "galaxies", "NASA, public domain"),
    ("retina.jpg", "retina", "Häggström, CC0"),
    ("ihc.png", "tissue stain", "no known copyright restrictions"),
    ("camera.png", "cameraman", "Lav Varshney, CC0"),
    ("coins.png", "coins", "Walters Art Museum, no known copyright restrictions"),
    ("brick.png", "brick", "CC0Textures, CC0"),
    ("grass.png", "grass", "CC0Textures, CC0"),
    ("gravel.png", "gravel", "CC0Textures, CC0"),
    ("horse.png", "horse", "Andreas Preuss, CC0"),
]

INSTALL_HINT = "pip install scikit-image (or the [demo] extra)"


def skimage_data_dir() -> Path:
    """Where scikit-image keeps its bundled sample images (found without importing skimage)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ScopeError(f"scope demo needs scikit-image's sample photos: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise ScopeError(f"scikit-image is installed without its data folder ({path}); reinstall it: {INSTALL_HINT}")
    return path


def _views(img: Image.Image):
    """The whole photo, four overlapping corner crops and a centre crop, and the mirrored photo."""
    w, h = img.size
    side = int(min(w, h) * 0.7)
    yield "full", img
    boxes = {
        "tl": (0, 0),
        "tr": (w - side, 0),
        "bl": (0, h - side),
        "br": (w - side, h - side),
        "c": ((w - side) // 2, (h - side) // 2),
    }
    for tag, (x, y) in boxes.items():
        yield tag, img.crop((x, y, x + side, y + side))
    yield "mirror", img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def prepare_photos(dest: Path) -> tuple[Path, Path, Path]:
    """Write the demo photos and their views to dest/ plus a labels file and a source-groups file (one
    group per photo); returns (folder, labels file, groups file)."""
    source = skimage_data_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    group_rows = []
    found = 0
    for filename, label, _credit in PHOTOS:
        path = source / filename
        if not path.exists():
            continue
        found += 1
        with Image.open(path) as im:
            img = im.convert("RGB")
        stem = Path(filename).stem
        for tag, view in _views(img):
            name = f"{stem}_{tag}.jpg"
            view.save(dest / name, quality=92)
            rows.append(f"{name}\t{label}")
            group_rows.append(f"{name}\t{stem}")
    if found < 4:
        raise ScopeError(f"scikit-image's sample photos are missing from {source}: {INSTALL_HINT}")
    labels = dest.parent / "photo_labels.tsv"
    labels.write_text("file\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    groups = dest.parent / "photo_groups.tsv"
    groups.write_text("file\tgroup\n" + "\n".join(group_rows) + "\n", encoding="utf-8")
    return dest, labels, groups

