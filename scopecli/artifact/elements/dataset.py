"""Element `/dataset` [scope.image-table]: the images a collect run saw; image indices elsewhere index it.

Root-level (one per file). Merging unites the inputs' tables sorted by path and gives every input its
old -> new index map, which the layer elements apply to their image indices.
"""

from __future__ import annotations

import h5py
import numpy as np

from scopecli.artifact.h5io import (check_string_lengths, first_line, get_dataset, read_numeric, read_strings,
    set_encoding, write_array, write_strings)
from scopecli.artifact.layout import dataset_fingerprint
from scopecli.core.errors import ScopeError
from scopecli.core.records import ImageTable

NAME = "dataset"
ENCODING = "scope.image-table"
FEATURE = "dataset"


def read_table(g: h5py.Group, n: int) -> ImageTable:
    """The whole table of `count` n rows, every column checked."""
    w = "/dataset"
    paths = read_strings(get_dataset(g, "paths", w), f"{w}/paths")
    sha = read_strings(get_dataset(g, "sha256", w), f"{w}/sha256")
    cols = {k: read_numeric(get_dataset(g, k, w), f"{w}/{k}", "i", 1).astype(np.int32) for k in ("width", "height", "label")}
    for k, v in [("paths", paths), ("sha256", sha)] + list(cols.items()):
        if len(v) != n:
            raise ScopeError(f"{w}/{k}: has {len(v)} rows, expected count={n}")
    sk_p = read_strings(get_dataset(g, "skipped_paths", w), f"{w}/skipped_paths")
    sk_r = read_strings(get_dataset(g, "skipped_reasons", w), f"{w}/skipped_reasons")
    if len(sk_p) != len(sk_r):
        raise ScopeError(f"{w}: skipped_paths and skipped_reasons differ in length")
    bad = next((i for i, x in enumerate(sha) if len(x) != 64 or x.strip("0123456789abcdef")), None)
    if bad is not None:
        raise ScopeError(f"{w}/sha256: row {bad} is not a sha256 hex digest")
    class_names = read_strings(get_dataset(g, "class_names", w), f"{w}/class_names")
    if n and ((cols["label"] < -1).any() or (cols["label"] >= len(class_names)).any()):
        raise ScopeError(f"{w}/label: class index outside -1..{len(class_names) - 1} (the class_names table)")
    source, source_names = None, []
    if get_dataset(g, "source", w, required=False) is not None:  # format 1.1: source groups
        source = read_numeric(get_dataset(g, "source", w), f"{w}/source", "i", 1).astype(np.int32)
        source_names = read_strings(get_dataset(g, "source_names", w), f"{w}/source_names")
        if len(source) != n or (n and ((source < -1).any() or (source >= len(source_names)).any())):
            raise ScopeError(f"{w}/source: {len(source)} rows or group index outside -1..{len(source_names) - 1}")
    pixel_mean = pixel_cov = None
    if get_dataset(g, "pixel_mean", w, required=False) is not None:  # format 1.2: pixel statistics
        pixel_mean = read_numeric(get_dataset(g, "pixel_mean", w), f"{w}/pixel_mean", "f", 1).astype(np.float64)
        pixel_cov = read_numeric(get_dataset(g, "pixel_cov", w), f"{w}/pixel_cov", "f", 2).astype(np.float64)
        c = len(pixel_mean)
        if pixel_cov.shape != (c, c) or not (np.isfinite(pixel_mean).all() and np.isfinite(pixel_cov).all()):
            raise ScopeError(f"{w}/pixel_cov: shape {pixel_cov.shape} or values do not fit pixel_mean [{c}]")
    return ImageTable(paths=paths, sha256=sha, width=cols["width"], height=cols["height"], label=cols["label"],
                      class_names=class_names, skipped=list(zip(sk_p, sk_r)), source=source,
                      source_names=source_names, pixel_mean=pixel_mean, pixel_cov=pixel_cov)


def read_labels(g: h5py.Group, n: int) -> tuple[np.ndarray, list[str]]:
    """Just the label column and class names (label profiles need no paths)."""
    w = "/dataset"
    label = read_numeric(get_dataset(g, "label", w), f"{w}/label", "i", 1).astype(np.int32)
    class_names = read_strings(get_dataset(g, "class_names", w), f"{w}/class_names")
    if len(label) != n or (n and ((label < -1).any() or (label >= len(class_names)).any())):
        raise ScopeError(f"{w}/label: {len(label)} rows (count={n}) or class index outside -1..{len(class_names) - 1}")
    return label, class_names


def read_paths(g: h5py.Group, indices) -> dict[int, str]:
    """Relative paths of some rows, read one by one (for tables too large to load for a few examples)."""
    ds = get_dataset(g, "paths", "/dataset")
    check_string_lengths(ds, "/dataset/paths")
    out = {}
    for i in sorted(set(indices)):
        try:
            v = ds[i]
        except (OSError, ValueError) as exc:
            raise ScopeError(f"/dataset/paths: unreadable ({first_line(exc)})")
        out[i] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out


def check_new_table(table: ImageTable) -> ImageTable:
    """A normalised copy of a table a run hands the writer, or a one-line error."""
    n = len(table.paths)
    if len(table.sha256) != n or any(len(np.asarray(a).reshape(-1)) != n for a in (table.width, table.height, table.label)):
        raise ScopeError("image table columns have different lengths")
    paths = [str(x) for x in table.paths]
    if any(a >= b for a, b in zip(paths, paths[1:])):
        raise ScopeError("image table paths must be sorted and unique (relative POSIX paths)")
    if any(not isinstance(h, str) or len(h) != 64 for h in table.sha256):
        raise ScopeError("image table sha256 entries must be 64-character hex digests")
    return ImageTable(
        paths=paths, sha256=[str(s) for s in table.sha256],
        width=np.asarray(table.width, np.int32).reshape(-1), height=np.asarray(table.height, np.int32).reshape(-1),
        label=np.asarray(table.label, np.int32).reshape(-1), class_names=[str(c) for c in table.class_names],
        skipped=[(str(a), str(b)) for a, b in table.skipped],
        source=None if table.source is None else np.asarray(table.source, np.int32).reshape(-1),
        source_names=[str(x) for x in table.source_names],
        pixel_mean=None if table.pixel_mean is None else np.asarray(table.pixel_mean, np.float64).reshape(-1),
        pixel_cov=None if table.pixel_cov is None else np.asarray(table.pixel_cov, np.float64),
    )


def write_table(f: h5py.File, t: ImageTable) -> None:
    g = f.create_group(NAME)
    set_encoding(g, ENCODING)
    g.attrs["fingerprint"] = dataset_fingerprint(t.paths, t.sha256)
    g.attrs["count"] = np.int64(len(t))
    write_strings(g, "paths", t.paths)
    write_strings(g, "sha256", t.sha256)
    write_array(g, "width", t.width, np.int32)
    write_array(g, "height", t.height, np.int32)
    write_array(g, "label", t.label, np.int32)
    write_strings(g, "class_names", t.class_names)
    write_strings(g, "skipped_paths", [a for a, _ in t.skipped])
    write_strings(g, "skipped_reasons", [b for _, b in t.skipped])
    if t.source is not None:
        write_array(g, "source", t.source, np.int32)
        write_strings(g, "source_names", t.source_names)
    if t.pixel_mean is not None and t.pixel_cov is not None:
        write_array(g, "pixel_mean", t.pixel_mean, np.float64)
        write_array(g, "pixel_cov", t.pixel_cov, np.float64)


def check_table(art) -> list[str]:
    """Rules the schema cannot express: the fingerprint matches, paths are sorted and unique."""
    problems = []
    try:
        t = art.dataset
        if dataset_fingerprint(t.paths, t.sha256) != art.dataset_fingerprint:
            problems.append("/dataset: fingerprint does not match the paths and sha256 columns")
        if t.paths != sorted(t.paths):
            problems.append("/dataset/paths: not sorted")
        if len(set(t.paths)) != len(t.paths):
            problems.append("/dataset/paths: duplicate paths")
    except ScopeError as exc:
        problems.append(str(exc))
    return problems


def union_tables(tables: list[ImageTable | None], names: list[str]) -> tuple[ImageTable | None, list[np.ndarray | None]]:
    """Union of the inputs' tables sorted by path, and each input's old -> new row map (None: no table).

    One path with two different sha256, or different class-name lists, cannot be merged."""
    rows: dict[str, tuple] = {}
    classes: list[str] | None = None
    with_pixels = [t for t in tables if t is not None and t.pixel_mean is not None]
    pixels = max(with_pixels, key=len) if with_pixels else None  # the largest run's pixel statistics
    skipped: dict[str, str] = {}
    groups: dict[str, str] = {}  # path -> source group name
    for t, name in zip(tables, names):
        if t is None:
            continue
        if t.source is not None:
            for p, g in zip(t.paths, t.source):
                if g >= 0:
                    groups.setdefault(p, t.source_names[int(g)])
        if t.class_names:
            if classes is None or not classes:
                classes = list(t.class_names)
            elif list(t.class_names) != classes:
                raise ScopeError(f"{name}: its class names differ from the other inputs'; cannot pack different label sets")
        for i, p in enumerate(t.paths):
            r = (t.sha256[i], int(t.width[i]), int(t.height[i]), int(t.label[i]))
            old = rows.get(p)
            if old is not None and old[0] != r[0]:
                raise ScopeError(f"{name}: image {p} has different content (sha256) than in another input")
            rows.setdefault(p, r)
        for p, why in t.skipped:
            skipped.setdefault(p, why)
    if all(t is None for t in tables):
        return None, [None] * len(tables)
    paths = sorted(rows)
    pos = {p: i for i, p in enumerate(paths)}
    maps = [None if t is None else np.array([pos[p] for p in t.paths], np.int64) for t in tables]
    source_names = sorted(set(groups.values()))
    gindex = {g: i for i, g in enumerate(source_names)}
    table = ImageTable(
        paths=paths, sha256=[rows[p][0] for p in paths],
        width=np.array([rows[p][1] for p in paths], np.int32), height=np.array([rows[p][2] for p in paths], np.int32),
        label=np.array([rows[p][3] for p in paths], np.int32), class_names=classes or [],
        skipped=sorted((p, w) for p, w in skipped.items() if p not in pos),
        source=np.array([gindex[groups[p]] if p in groups else -1 for p in paths], np.int32) if groups else None,
        source_names=source_names,
        pixel_mean=None if pixels is None else pixels.pixel_mean, pixel_cov=None if pixels is None else pixels.pixel_cov,
    )
    return table, maps
