"""Image sources for `collect`: folders, ImageFolder trees and path lists, in one deterministic order.

Why: dataset examples are only trustworthy if every run sees the same images in the same order, and a
bad file (truncated, not an image, huge) must be skipped with a reason instead of killing an hour-long
run. Decoding happens in the loader's threads or processes (`loader.py`); they hand back integer model-input crops (uint8, or int32
for 16-bit inputs: less to move than floats) together with each file's sha256 and original size, read from
the same bytes. How one sample becomes the model's input domain (channels, bit depth) is `pixels.py`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scopecli.core.errors import ScopeError
from scopecli.data.pixels import (  # noqa: F401 - re-exported: callers import these from here
    MAX_CHANNELS, MAX_PIXELS, MIN_SIDE, TIFF_HINT, BadImage, ChannelFiles, PixelSpec, _to_rgb, model_input,
    pil_transform, read_image, read_pixels, zeros_input,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                    ".npy")
CHANNEL_MAP_EXTENSIONS = (".csv", ".tsv")  # a list file with 2+ columns: sample, one file per channel


@dataclass
class ImageSource:
    """The candidate images of a run: absolute files, their table paths and labels, sorted by path."""

    root: Path
    files: list[Path | ChannelFiles]  # absolute; ChannelFiles: one file per channel (kind "channels")
    paths: list[str]  # relative POSIX paths (the ImageTable's), sorted
    label: np.ndarray  # int32 [N], -1 unknown
    class_names: list[str]
    kind: str  # "imagefolder" | "folder" | "list" | "channels"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # found while listing (e.g. labels)
    labels_file: str | None = None
    source: np.ndarray | None = None  # int32 [N]: source group of each image (-1: its own), from --groups
    source_names: list[str] = field(default_factory=list)
    groups_file: str | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict:
        return {"root": str(self.root), "kind": self.kind, "images": len(self.paths),
                "classes": len(self.class_names), "labels_file": self.labels_file,
                "sources": len(self.source_names), "groups_file": self.groups_file}

    def group_ids(self) -> np.ndarray:
        """int64 [N]: one id per source group; an image without a group is a group of its own."""
        n = len(self.paths)
        own = np.arange(n, dtype=np.int64) + len(self.source_names)
        return own if self.source is None else np.where(self.source >= 0, self.source.astype(np.int64), own)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if _is_image_name(name):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


_FILE_COLS = ("file", "filename", "path", "image", "file_name", "img")
_INDEX_COLS = ("class_index", "label", "index", "class_id", "target", "label_index")
_NAME_COLS = ("class_name", "name", "class", "label_name", "category")


def _read_mapping_rows(path: str | Path, kind: str) -> tuple[list[list[str]], str]:
    """The stripped cells of a TSV/CSV mapping file (`kind` is 'labels' or 'groups', for the errors), and
    its delimiter: a tab if the first line holds one, else a comma. Blank and '#' lines are dropped, and a
    missing, unreadable or empty file is a one-line ScopeError."""
    p = Path(path)
    if not p.is_file():
        raise ScopeError(f"{kind} file not found: {path}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScopeError(f"cannot read {kind} file {path}: {exc}".splitlines()[0]) from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ScopeError(f"{kind} file {path} is empty")
    delim = "\t" if "\t" in lines[0] else ","
    return [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delim)], delim


def read_labels(path: str | Path) -> tuple[dict[str, int], list[str]]:
    """Read a TSV/CSV mapping file -> label (index or name); returns ({file: index}, class_names).

    Accepted rows: `file,label_name`, `file,index`, `file,index,name`, and the sample folder's
    `file, class index, wnid, class name`. A header row is recognised by its column names.
    """
    rows, delim = _read_mapping_rows(path, "labels")
    header = [c.lower().replace(" ", "_") for c in rows[0]]
    fcol, icol, ncol = 0, None, None
    if any(h in _FILE_COLS for h in header):
        fcol = next(i for i, h in enumerate(header) if h in _FILE_COLS)
        icol = next((i for i, h in enumerate(header) if h in _INDEX_COLS), None)
        ncol = next((i for i, h in enumerate(header) if h in _NAME_COLS), None)
        rows = rows[1:]
    else:
        width = len(rows[0])
        if width < 2:
            raise ScopeError(f"labels file {path} needs at least two columns: file and label")
        if width == 2:
            icol = 1
        elif width == 3:
            icol, ncol = 1, 2
        else:  # file, class index, wnid, class name
            icol, ncol = 1, width - 1
    if icol is None and ncol is None:
        raise ScopeError(f"labels file {path}: no label column (expected one of {', '.join(_INDEX_COLS + _NAME_COLS)})")
    raw: list[tuple[str, str, str | None]] = []
    first_row = 2 if fcol != 0 or header[0] in _FILE_COLS else 1
    for n, r in enumerate(rows, start=first_row):
        if len(r) <= max(c for c in (fcol, icol, ncol) if c is not None):
            raise ScopeError(f"labels file {path}: row {n} has {len(r)} column(s): {delim.join(r)[:80]}")
        raw.append((r[fcol], r[icol] if icol is not None else r[ncol], r[ncol] if ncol is not None else None))
    numeric = all(_is_int(lab) for _, lab, _ in raw)
    mapping: dict[str, int] = {}
    if numeric:
        names: dict[int, str] = {}
        for f, lab, name in raw:
            idx = int(lab)
            if idx < 0:
                raise ScopeError(f"labels file {path}: negative class index {idx} for {f}")
            mapping[f] = idx
            if name is not None and name != lab:
                names[idx] = name
        n_cls = max(mapping.values(), default=-1) + 1
        class_names = [names.get(i, str(i)) for i in range(n_cls)]
    else:
        class_names = sorted({lab for _, lab, _ in raw})
        index = {c: i for i, c in enumerate(class_names)}
        mapping = {f: index[lab] for f, lab, _ in raw}
    return mapping, class_names


def read_groups(path: str | Path) -> dict[str, str]:
    """A TSV/CSV of `file, group`: images of one group are views of one source photo (crops, mirrors),
    so collect keeps at most --per-source examples of each group per unit."""
    rows, delim = _read_mapping_rows(path, "groups")
    if rows[0][0].lower() in _FILE_COLS:
        rows = rows[1:]
    out = {}
    for n, r in enumerate(rows, start=1):
        if len(r) < 2 or not r[0] or not r[1]:
            raise ScopeError(f"groups file {path}: row {n} needs two columns, file and group: {delim.join(r)[:80]}")
        out[r[0]] = r[1]
    return out


def _apply_groups(paths: list[str], groups_path, skipped: list) -> tuple[np.ndarray, list[str]]:
    mapping = read_groups(groups_path)
    by_rel = {Path(k).as_posix().lstrip("./"): v for k, v in mapping.items()}
    by_base: dict[str, list[str]] = {}
    for k, v in mapping.items():
        by_base.setdefault(Path(k).name, []).append(v)
    names = sorted(set(mapping.values()))
    index = {g: i for i, g in enumerate(names)}
    source = np.full(len(paths), -1, dtype=np.int32)
    for i, p in enumerate(paths):
        g = by_rel.get(p)
        if g is None and len(by_base.get(Path(p).name, ())) == 1:
            g = by_base[Path(p).name][0]
        if g is not None:
            source[i] = index[g]
    return source, names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _apply_labels(paths: list[str], labels_path, skipped: list) -> tuple[np.ndarray, list[str]]:
    mapping, class_names = read_labels(labels_path)
    by_rel = {Path(k).as_posix().lstrip("./"): v for k, v in mapping.items()}
    by_base: dict[str, list[int]] = {}
    for k, v in mapping.items():
        by_base.setdefault(Path(k).name, []).append(v)
    label = np.full(len(paths), -1, dtype=np.int32)
    used = set()
    for i, p in enumerate(paths):
        if p in by_rel:
            label[i] = by_rel[p]
            used.add(p)
        elif len(by_base.get(Path(p).name, ())) == 1:
            label[i] = by_base[Path(p).name][0]
            used.add(Path(p).name)
    present_rel = set(paths)
    present_base = {Path(p).name for p in paths}
    for k in by_rel:
        if k not in present_rel and Path(k).name not in present_base:
            skipped.append((k, "named in the labels file but not found"))
    return label, class_names


def _is_channel_map(src: Path) -> bool:
    """A .csv/.tsv whose rows have two or more cells: `sample, file_ch0, file_ch1, ...`. A one-column file
    stays a plain list of image paths."""
    if not src.name.lower().endswith(CHANNEL_MAP_EXTENSIONS):
        return False
    try:
        text = src.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return False
    delim = "\t" if "\t" in lines[0] else ","
    return any(len([c for c in r if c.strip()]) >= 2 for r in csv.reader(lines, delimiter=delim))


def read_channel_map(path: str | Path) -> tuple[Path, list[str], list[ChannelFiles], list[tuple[str, str]]]:
    """A channels mapping file -> (root, sorted sample names, their ChannelFiles, skipped samples).

    Rows are `sample, file_ch0, file_ch1, ...` (comma or tab; an optional header row whose first cell starts
    with "sample"; '#' comments); relative paths are relative to the mapping file. Every row names the same
    number of files; a sample named twice is a one-line ScopeError; a sample whose file is missing is skipped."""
    src = Path(path).expanduser()
    rows, delim = _read_mapping_rows(src, "channels")
    if rows and rows[0] and rows[0][0].lower().startswith("sample"):
        rows = rows[1:]
    if not rows:
        raise ScopeError(f"channels file {path} names no samples")
    base = src.resolve().parent
    width = None
    first_row: dict[str, int] = {}
    entries: dict[str, ChannelFiles] = {}
    skipped: list[tuple[str, str]] = []
    for n, r in enumerate(rows, start=1):
        while r and not r[-1]:
            r = r[:-1]
        if len(r) < 2 or not all(r):
            raise ScopeError(f"channels file {path}: row {n} needs a sample name and one file per channel: "
                             f"{delim.join(r)[:80]}")
        if width is None:
            width = len(r)
        elif len(r) != width:
            raise ScopeError(f"channels file {path}: row {n} names {len(r) - 1} channel files, row 1 names {width - 1}")
        name = r[0]
        if name in first_row:
            raise ScopeError(f"channels file {path}: sample {name!r} is named twice (rows {first_row[name]} and {n})")
        first_row[name] = n
        files = []
        for cell in r[1:]:
            p = Path(cell).expanduser()
            files.append(Path(os.path.normpath(p if p.is_absolute() else base / p)))
        missing = next((cell for cell, f in zip(r[1:], files) if not f.is_file()), None)
        if missing is not None:
            skipped.append((name, f"channel file {missing} not found"))
            continue
        entries[name] = ChannelFiles(files)
    if not entries:
        raise ScopeError(f"none of the {len(rows)} samples in channels file {path} has all its channel files")
    names = sorted(entries)
    return base, names, [entries[k] for k in names], skipped


def open_source(path: str | Path, labels: str | Path | None = None, groups: str | Path | None = None) -> ImageSource:
    """List the images of a folder, an ImageFolder tree, a text file of paths or a channels mapping file
    (.csv/.tsv of `sample, file_ch0, file_ch1, ...`, see `read_channel_map`), sorted by relative path or
    sample name; `labels`: a file -> class table; `groups`: a file -> source-group table (see `read_groups`)."""
    src = Path(path).expanduser()
    if not src.exists():
        raise ScopeError(f"data path not found: {path}")
    skipped: list[tuple[str, str]] = []
    files = None
    if src.is_dir():
        root = src.resolve()
        paths = _walk_images(root)
        if not paths:
            raise ScopeError(f"no images found in {path} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        top_level = [p for p in paths if "/" not in p]
        if not top_level and labels is None:
            kind = "imagefolder"
            class_names = sorted({p.split("/", 1)[0] for p in paths})
            index = {c: i for i, c in enumerate(class_names)}
            label = np.array([index[p.split("/", 1)[0]] for p in paths], dtype=np.int32)
        else:
            kind = "folder"
            label, class_names = (np.full(len(paths), -1, np.int32), [])
    elif src.is_file() and _is_image_name(src.name):
        raise ScopeError(f"--data must be a folder or a text file listing image paths, not one image: {path}")
    elif src.is_file() and _is_channel_map(src):
        kind = "channels"
        root, paths, files, skipped = read_channel_map(src)
        label, class_names = (np.full(len(paths), -1, np.int32), [])
    else:
        kind = "list"
        try:
            lines = src.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ScopeError(f"cannot read image list {path}: {exc}".splitlines()[0]) from None
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not entries:
            raise ScopeError(f"image list {path} names no images")
        base = src.resolve().parent
        absolute = []
        for e in entries:
            p = Path(e).expanduser()
            p = p if p.is_absolute() else base / p
            p = Path(os.path.normpath(p))
            if p.is_file():
                absolute.append(p)
            else:
                skipped.append((e, "listed but not found"))
        absolute = sorted(set(absolute))
        if not absolute:
            raise ScopeError(f"none of the {len(entries)} files listed in {path} exist")
        root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
        paths = sorted(p.relative_to(root).as_posix() for p in absolute)
        label, class_names = (np.full(len(paths), -1, np.int32), [])
    if labels is not None:
        label, class_names = _apply_labels(paths, labels, skipped)
    if files is None:
        files = [root / p for p in paths]
    source, source_names = (None, []) if groups is None else _apply_groups(paths, groups, skipped)
    return ImageSource(root=root, files=files, paths=paths, label=label, class_names=class_names, kind=kind,
                       skipped=skipped, labels_file=str(labels) if labels is not None else None,
                       source=source, source_names=source_names, groups_file=str(groups) if groups is not None else None)


class ModelInputs(torch.utils.data.Dataset):
    """Dataset over chosen source indices: [channels, crop, crop] model inputs (not normalized), uint8 for
    8-bit specs and int32 (0..65535) for 16-bit ones; `pixels` is the model's input domain (default 8-bit RGB).

    Bad files give a zero image with ok=False and the reason, so batches keep their composition.
    """

    def __init__(self, files: list, indices, resize: int, crop: int, interpolation: str = "bilinear",
                 max_pixels: int = MAX_PIXELS, pixels: PixelSpec | None = None):
        self.files = files
        self.indices = list(indices)
        self.resize, self.crop, self.interpolation = int(resize), int(crop), interpolation
        self.max_pixels = int(max_pixels)
        self.pixels = pixels if pixels is not None else PixelSpec()
        self._transform = None

    def __len__(self) -> int:
        return len(self.indices)

    def transform(self):
        """The 8-bit photo path's torchvision transform (Resize, CenterCrop, PILToTensor)."""
        if self._transform is None:
            self._transform = pil_transform(self.resize, self.crop, self.interpolation)
        return self._transform

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        try:
            x, sha, (w, h) = model_input(self.files[index], self.pixels, self.resize, self.crop, self.interpolation,
                                         self.max_pixels, transform=self.transform())
            reason = ""
        except BadImage as exc:
            x = zeros_input(self.pixels, self.crop)
            sha, w, h, reason = "", 0, 0, str(exc)
        return {"image": x, "index": index, "ok": not reason, "sha256": sha, "width": w, "height": h,
                "reason": reason}
