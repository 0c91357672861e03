"""Read scope artifacts safely and lazily (format 1.x).

Files may come from strangers: the file is opened read-only, the version is checked before
anything else, every element is dispatched on its encoding type/version, links that leave the
file, virtual/external datasets, unknown filters and insane sizes are refused, images are decoded
only from PNG/JPEG and checked against their declared shape, and nothing is ever unpickled.
Reading one unit touches only that unit's bytes (plus the small per-layer index tables, once).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from scopecli.artifact.h5io import (
    attr_int,
    attr_str,
    attr_str_list,
    check_element,
    H5_ERRORS,
    check_global_heaps,
    check_string_lengths,
    raised_by_h5py,
    short_repr,
    first_line,
    get_dataset,
    get_group,
    read_numeric,
    read_string,
    read_strings,
)
from scopecli.artifact.images import decode_image
from scopecli.artifact.layout import (
    ENC_DATASET,
    ENC_DICT,
    ENC_EXAMPLE_SET,
    ENC_EXAMPLES,
    ENC_LAYER,
    ENC_LAYERS,
    ENC_PROBE,
    ENC_PROVENANCE,
    ENC_RENDERS,
    ENC_ROOT,
    ENC_SPEC,
    FORMAT_MAJOR,
    FORMAT_NAME,
    KNOWN_FEATURES,
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_UNITS,
    unescape_name,
)
from scopecli.errors import ScopeError
from scopecli.records import QUANTILES, ExampleSet, ImageTable, LayerRecord, ProbeBlock, StatsBlock
from scopecli.units import parse_unit_address

ENC_MODEL = "scope.model"
PATH_TABLE_LOAD_LIMIT = 50_000  # image tables up to this size are read whole for example paths
WHICH = ("top", "bottom")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

RENDER_META = (
    "seed", "steps", "size", "param", "lr", "act_final", "act_robust", "time_s", "dataset_max_ratio",
)


@dataclass
class RenderView:
    """One stored render: the metadata fields of RenderRecord, with the image decoded on first access."""

    layer: str
    unit: int
    objective: str
    diversity_index: int
    height: int
    width: int
    seed: int
    steps: int
    size: int
    param: str
    lr: float
    act_final: float
    act_robust: float
    act_trace: np.ndarray
    time_s: float
    dataset_max_ratio: float
    _load: object = field(repr=False, default=None)
    _encoded: bytes | None = field(repr=False, default=None)
    _image: np.ndarray | None = field(repr=False, default=None)

    @property
    def encoded(self) -> bytes:
        """The stored PNG bytes (e.g. to embed in HTML without re-encoding)."""
        if self._encoded is None:
            self._encoded = self._load()
        return self._encoded

    @property
    def image(self) -> np.ndarray:
        """HxWx3 uint8 pixels, decoded and checked against the declared size."""
        if self._image is None:
            self._image = decode_image(
                self.encoded, self.height, self.width, f"render {self.layer}:{self.unit} ({self.objective})"
            )
        return self._image


@dataclass
class Example:
    """One dataset example of a unit: where it came from, its score, and its patch (decoded lazily)."""

    layer: str
    unit: int
    rank: int
    score: float
    image_index: int
    image_path: str | None
    loc: tuple[int, int]  # (y, x) in the activation grid
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in model-input pixels, unclipped
    height: int
    width: int
    _load: object = field(repr=False, default=None)
    _encoded: bytes | None = field(repr=False, default=None)
    _patch: np.ndarray | None = field(repr=False, default=None)

    @property
    def encoded(self) -> bytes:
        """The stored JPEG/PNG bytes of the patch (b"" when the run stored no patch)."""
        if self._encoded is None:
            self._encoded = self._load() if self._load is not None else b""
        return self._encoded

    @property
    def patch(self) -> np.ndarray | None:
        """HxWx3 uint8 receptive-field crop, decoded and checked against the declared size (None if not stored)."""
        if not self.encoded:
            return None
        if self._patch is None:
            self._patch = decode_image(self.encoded, self.height, self.width, f"patch {self.layer}:{self.unit}#{self.rank}")
        return self._patch


@dataclass
class UnitView:
    """Everything the artifact holds about one unit."""

    layer: str
    index: int
    renders: list[RenderView]
    examples: dict[str, list[Example]]
    stats: dict


class LazyPatches:
    """`ExampleSet.patches` that decodes patch [u][k] only when indexed (None where no example)."""

    def __init__(self, section: "_ExampleSection", rows: np.ndarray):
        self._s, self._rows = section, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _LazyPatchRow(self._s, int(self._rows[i]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class _LazyPatchRow:
    def __init__(self, section: "_ExampleSection", row: int):
        self._s, self._row = section, row

    def __len__(self) -> int:
        return self._s.k

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if not -self._s.k <= k < self._s.k:
            raise IndexError(k)
        return self._s.patch(self._row, k % self._s.k)

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]


def _blob_reader(ds: h5py.Dataset, where: str):
    def read(off: int, length: int) -> bytes:
        try:
            return ds[off : off + length].tobytes()
        except OSError as exc:
            raise ScopeError(f"{where}: image bytes unreadable ({first_line(exc)}); the file is corrupt")

    return read


def _check_spans(offset: np.ndarray, length: np.ndarray, blob_size: int, where: str, allow_empty: bool) -> None:
    if offset.shape != length.shape:
        raise ScopeError(f"{where}: offset and length shapes differ")
    if offset.size == 0:
        return
    if (offset < 0).any() or (length < 0).any() or (not allow_empty and (length == 0).any()):
        raise ScopeError(f"{where}: negative or empty image offsets")
    if (offset.astype(np.int64) + length.astype(np.int64) > blob_size).any():
        raise ScopeError(f"{where}: image offsets out of bounds of the byte array ({blob_size} bytes)")


def _check_sizes(h: np.ndarray, w: np.ndarray, where: str, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if h.size and ((h < lo).any() or (w < lo).any() or (h > MAX_IMAGE_SIDE).any() or (w > MAX_IMAGE_SIDE).any()):
        raise ScopeError(f"{where}: declared image sizes outside 1..{MAX_IMAGE_SIDE}")


class _RenderSection:
    """Index table of one layer's renders (loaded once), and lazy access to their PNG bytes."""

    def __init__(self, g: h5py.Group, layer: str, units: int, where: str):
        check_element(g, ENC_RENDERS, where, h5py.Group)
        self.layer = layer
        self.where = where
        cols = {}
        for name in ("unit", "offset", "length", "trace_offset", "trace_length", "seed"):
            cols[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", "i", 1).astype(np.int64)
        for name in ("diversity_index", "height", "width", "steps", "size"):
            cols[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", "i", 1).astype(np.int64)
        for name in ("lr", "act_final", "act_robust", "time_s", "dataset_max_ratio"):
            cols[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", "f", 1).astype(np.float64)
        cols["objective"] = np.array(read_strings(get_dataset(g, "objective", where), f"{where}/objective"), dtype=object)
        cols["param"] = np.array(read_strings(get_dataset(g, "param", where), f"{where}/param"), dtype=object)
        n = len(cols["unit"])
        for k, v in cols.items():
            if len(v) != n:
                raise ScopeError(f"{where}/{k}: has {len(v)} rows, expected {n}")
        self.present = read_numeric(get_dataset(g, "present", where), f"{where}/present", "u", 1).astype(bool)
        if self.present.shape != (units,):
            raise ScopeError(f"{where}/present: shape {self.present.shape}, expected ({units},)")
        if n and ((cols["unit"] < -1).any() or (cols["unit"] >= units).any()):
            raise ScopeError(f"{where}/unit: unit index out of range 0..{units - 1}")
        if n > 1 and (np.diff(cols["unit"]) < 0).any():
            raise ScopeError(f"{where}/unit: rows are not sorted by unit")
        self.blob = get_dataset(g, "blob", where)
        if self.blob.dtype != np.uint8 or self.blob.ndim != 1:
            raise ScopeError(f"{where}/blob: expected a 1-D uint8 array")
        _check_spans(cols["offset"], cols["length"], self.blob.shape[0], f"{where}", allow_empty=False)
        _check_sizes(cols["height"], cols["width"], where)
        self.traces_ds = get_dataset(g, "traces", where)
        if self.traces_ds.dtype.kind != "f" or self.traces_ds.ndim != 1:
            raise ScopeError(f"{where}/traces: expected a 1-D float array")
        _check_spans(cols["trace_offset"], cols["trace_length"], self.traces_ds.shape[0], f"{where}/traces", True)
        self.cols = cols
        self.n = n
        self._read = _blob_reader(self.blob, where)
        self._traces = None

    def traces(self) -> np.ndarray:
        if self._traces is None:
            self._traces = read_numeric(self.traces_ds, f"{self.where}/traces", "f", 1).astype(np.float32)
        return self._traces

    def rows_of(self, unit: int) -> range:
        u = self.cols["unit"]
        return range(int(np.searchsorted(u, unit, "left")), int(np.searchsorted(u, unit, "right")))

    def view(self, i: int) -> RenderView:
        c = self.cols
        off, ln = int(c["offset"][i]), int(c["length"][i])
        toff, tln = int(c["trace_offset"][i]), int(c["trace_length"][i])
        trace = self.traces()[toff : toff + tln].copy() if tln else np.zeros(0, np.float32)
        return RenderView(
            layer=self.layer, unit=int(c["unit"][i]), objective=str(c["objective"][i]),
            diversity_index=int(c["diversity_index"][i]), height=int(c["height"][i]), width=int(c["width"][i]),
            seed=int(c["seed"][i]), steps=int(c["steps"][i]), size=int(c["size"][i]), param=str(c["param"][i]),
            lr=float(c["lr"][i]), act_final=float(c["act_final"][i]), act_robust=float(c["act_robust"][i]),
            act_trace=trace, time_s=float(c["time_s"][i]), dataset_max_ratio=float(c["dataset_max_ratio"][i]),
            _load=lambda off=off, ln=ln: self._read(off, ln),
        )


class _ExampleSection:
    """Index table of one layer's top or bottom examples (loaded once); patches read per unit."""

    def __init__(self, g: h5py.Group, layer: str, units: int, n_images: int | None, where: str):
        check_element(g, ENC_EXAMPLE_SET, where, h5py.Group)
        self.layer, self.where = layer, where
        self.units = read_numeric(get_dataset(g, "units", where), f"{where}/units", "i", 1).astype(np.int64)
        u = len(self.units)
        self.score = read_numeric(get_dataset(g, "score", where), f"{where}/score", "f", 2).astype(np.float32)
        k = self.score.shape[1] if self.score.ndim == 2 else 0
        self.k = k
        want = {
            "image_index": ("i", (u, k)), "loc": ("i", (u, k, 2)), "box": ("i", (u, k, 4)),
            "offset": ("i", (u, k)), "length": ("i", (u, k)), "height": ("i", (u, k)), "width": ("i", (u, k)),
        }
        for name, (kind, shape) in want.items():
            arr = read_numeric(get_dataset(g, name, where), f"{where}/{name}", kind, len(shape))
            if arr.shape != shape:
                raise ScopeError(f"{where}/{name}: shape {arr.shape}, expected {shape}")
            setattr(self, name, arr.astype(np.int64) if name in ("image_index", "offset", "length") else arr.astype(np.int32))
        if self.score.shape != (u, k):
            raise ScopeError(f"{where}/score: shape {self.score.shape}, expected {(u, k)}")
        self.present = read_numeric(get_dataset(g, "present", where), f"{where}/present", "u", 1).astype(bool)
        if self.present.shape != (units,):
            raise ScopeError(f"{where}/present: shape {self.present.shape}, expected ({units},)")
        if u and ((self.units < 0).any() or (self.units >= units).any()):
            raise ScopeError(f"{where}/units: unit index out of range 0..{units - 1}")
        if u > 1 and (np.diff(self.units) <= 0).any():
            raise ScopeError(f"{where}/units: not strictly increasing")
        if self.image_index.size:
            hi = n_images if n_images is not None else 0
            bad = (self.image_index < -1) | (self.image_index >= hi)
            if bad.any():
                raise ScopeError(f"{where}/image_index: index out of range of the image table ({hi} images)")
        self.blob = get_dataset(g, "blob", where)
        if self.blob.dtype != np.uint8 or self.blob.ndim != 1:
            raise ScopeError(f"{where}/blob: expected a 1-D uint8 array")
        _check_spans(self.offset, self.length, self.blob.shape[0], where, allow_empty=True)
        has = self.length > 0
        if (has & (self.image_index < 0)).any():
            raise ScopeError(f"{where}: a patch is stored for a missing example (image_index -1)")
        _check_sizes(self.height[has], self.width[has], where)
        self._read = _blob_reader(self.blob, where)
        self._row_of = {int(x): i for i, x in enumerate(self.units)}

    def row_of(self, unit: int) -> int | None:
        return self._row_of.get(unit)

    def patch_bytes(self, row: int, k: int) -> bytes:
        return self._read(int(self.offset[row, k]), int(self.length[row, k]))

    def patch(self, row: int, k: int) -> np.ndarray | None:
        if self.length[row, k] == 0:
            return None
        return decode_image(
            self.patch_bytes(row, k), int(self.height[row, k]), int(self.width[row, k]),
            f"patch {self.layer}:{int(self.units[row])}#{k}",
        )

    def row_bytes(self, row: int) -> list[bytes | None]:
        """All encoded patches of one unit with ONE read (they are stored contiguously)."""
        ln = self.length[row]
        if not (ln > 0).any():
            return [None] * self.k
        offs = self.offset[row]
        lo = int(offs[ln > 0].min())
        hi = int((offs + ln)[ln > 0].max())
        chunk = self._read(lo, hi - lo)
        return [chunk[int(o) - lo : int(o) - lo + int(n)] if n > 0 else None for o, n in zip(offs, ln)]


class _LayerEntry:
    def __init__(self, group: h5py.Group, rec: LayerRecord, where: str):
        self.group, self.rec, self.where = group, rec, where
        self._renders = None
        self._ex: dict = {}
        self._stats = None
        self._probe = None
        self._loaded: set[str] = set()


def _json_load(text: str, where: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ScopeError(f"{where}: invalid JSON ({first_line(exc)})")


def _check_path(path) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ScopeError(f"{p}: no such file")
    if os.path.isdir(p):
        raise ScopeError(f"{p}: is a directory, not an artifact file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ScopeError(f"{p}: cannot read ({exc.strerror or exc})")
    if head != HDF5_SIGNATURE:
        # HDF5 may also sit behind a user block at 512, 1024, ...: h5py knows.
        try:
            ok = h5py.is_hdf5(p)
        except Exception:
            ok = False
        if not ok:
            raise ScopeError(f"{p}: not a scope artifact (not an HDF5 file)")
    check_global_heaps(p)
    return p


def open_artifact(path) -> "Artifact":
    """Open a scope artifact read-only. Refuses non-artifacts, newer major versions and unsafe content.

    Returns an `Artifact`; use it as a context manager or call `.close()`.
    """
    p = _check_path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ScopeError(f"{p}: not a readable HDF5 file ({first_line(exc)}); it may be truncated or corrupt")
    try:
        fmt = f.attrs.get("format")
        fmt = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else fmt
        if fmt != FORMAT_NAME:
            raise ScopeError(f"{p}: not a scope artifact (HDF5 file without format={FORMAT_NAME!r})")
        version = attr_str(f, "format_version", p)
        try:
            major, minor = (int(x) for x in version.split("."))
        except ValueError:
            raise ScopeError(f"{p}: bad format_version {short_repr(version)}")
        if major > FORMAT_MAJOR:
            raise ScopeError(f"{p}: artifact format {version} is newer than this scope reads ({FORMAT_MAJOR}.x); upgrade scope")
        reader = _READERS.get(major)
        if reader is None:
            raise ScopeError(f"{p}: artifact format {version} is not supported")
        return reader(f, p, version)
    except ScopeError:
        f.close()
        raise
    except Exception as exc:  # corrupt metadata surfaces as assorted h5py errors
        f.close()
        raise ScopeError(f"{p}: unreadable artifact ({type(exc).__name__}: {first_line(exc)})")


class Artifact:
    """Reader of artifact format 1.x. Metadata is read at open; images only when asked for."""

    def __init__(self, f: h5py.File, path: str, version: str):
        self._f = f
        self.path = path
        self.format_version = version
        where = path
        check_element(f, ENC_ROOT, where)
        self.required_features = attr_str_list(f, "required_features", where)
        unknown = [x for x in self.required_features if x not in KNOWN_FEATURES]
        if unknown:
            raise ScopeError(f"{path}: needs features this scope does not know ({', '.join(unknown)}); upgrade scope")
        self.writer = attr_str(f, "writer", where)
        self.created = attr_str(f, "created", where)
        self.modified = attr_str(f, "modified", where)
        self._check_no_foreign_links()
        mg = get_group(f, "model", where)
        check_element(mg, ENC_MODEL, f"{where}:/model")
        model = _json_load(read_string(get_dataset(mg, "info_json", "/model"), "/model/info_json"), "/model/info_json")
        if not isinstance(model, dict):
            raise ScopeError(f"{path}: /model/info_json is not a JSON object")
        self.model: dict = model
        self.fingerprint: str = attr_str(mg, "fingerprint", "/model")
        pg = get_group(f, "provenance", where)
        check_element(pg, ENC_PROVENANCE, "/provenance")
        self.provenance: list[dict] = [
            _json_load(s, "/provenance/runs") for s in read_strings(get_dataset(pg, "runs", "/provenance"), "/provenance/runs")
        ]
        self._dataset = None
        self._dataset_loaded = False
        dg = get_group(f, "dataset", where, required=False)
        self._dataset_group = dg
        self.dataset_fingerprint: str | None = None
        self.n_images: int | None = None
        if dg is not None:
            check_element(dg, ENC_DATASET, "/dataset")
            self.dataset_fingerprint = attr_str(dg, "fingerprint", "/dataset")
            self.n_images = attr_int(dg, "count", "/dataset", 0, MAX_IMAGES)
        lg = get_group(f, "layers", where)
        check_element(lg, ENC_LAYERS, "/layers")
        order = attr_str_list(lg, "order", "/layers")
        by_name = {}
        for link in lg:
            g = get_group(lg, link, "/layers")
            lw = f"/layers/{link}"
            check_element(g, ENC_LAYER, lw)
            name = attr_str(g, "name", lw)
            if name != unescape_name(link):
                raise ScopeError(f"{lw}: name attribute {short_repr(name)} does not match the group name")
            shape = np.asarray(g.attrs.get("shape", ()))
            if shape.shape != (3,) or shape.dtype.kind not in "iu" or (shape < 0).any():
                raise ScopeError(f"{lw}: bad shape attribute")
            rec = LayerRecord(
                name=name, units=attr_int(g, "units", lw, 1, MAX_UNITS),
                shape=tuple(int(x) for x in shape),
                rf_size=attr_int(g, "rf_size", lw, 0), rf_stride=attr_int(g, "rf_stride", lw, 0),
                rf_start=attr_int(g, "rf_start", lw),
            )
            by_name[name] = _LayerEntry(g, rec, lw)
        if sorted(order) != sorted(by_name):
            raise ScopeError(f"{path}: /layers order attribute does not match the layer groups")
        self._layers = by_name
        self.layers: list[str] = list(order)

    # ------------------------------------------------------------------------------------------- basics

    def close(self) -> None:
        """Close the underlying file."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<scope artifact {self.path!r} format {self.format_version}, {len(self.layers)} layers>"

    def _check_no_foreign_links(self) -> None:
        """Refuse soft/external/user-defined links anywhere (low-level visit: fast on large files)."""
        bad = []

        def visit(name, info):
            if info.type != h5py.h5l.TYPE_HARD:
                bad.append(name.decode("utf-8", "replace"))
                return True  # stop
            return None

        self._f.id.links.visit(visit, info=True)
        if bad:
            kind = "ExternalLink" if self._f.get(bad[0], getlink=True).__class__ is h5py.ExternalLink else "SoftLink"
            raise ScopeError(f"{self.path}: links are not allowed in an artifact: /{bad[0]} ({kind})")

    @property
    def spec_text(self) -> str:
        """The SPEC.md text embedded in the file by its writer."""
        g = get_group(self._f, "spec", self.path)
        check_element(g, ENC_SPEC, "/spec")
        return read_string(get_dataset(g, "text", "/spec"), "/spec/text")

    @property
    def size_bytes(self) -> int:
        return os.path.getsize(self.path)

    def _entry(self, layer: str) -> _LayerEntry:
        e = self._layers.get(layer)
        if e is None:
            import difflib

            close = difflib.get_close_matches(layer, self.layers, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; it has: {', '.join(self.layers[:8])}{' …' if len(self.layers) > 8 else ''}" if self.layers else "; it has no layers"
            )
            raise ScopeError(f"layer {layer!r} is not in {os.path.basename(self.path)}{hint}")
        return e

    def layer(self, name: str) -> LayerRecord:
        """The LayerRecord (units, shape, receptive field) of a stored layer."""
        return self._entry(name).rec

    @property
    def dataset(self) -> ImageTable | None:
        """The image table of the collect run(s), or None when no dataset was collected."""
        if not self._dataset_loaded:
            self._dataset = self._read_dataset() if self._dataset_group is not None else None
            self._dataset_loaded = True
        return self._dataset

    def _read_dataset(self) -> ImageTable:
        g, w = self._dataset_group, "/dataset"
        n = self.n_images
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
        return ImageTable(
            paths=paths, sha256=sha, width=cols["width"], height=cols["height"], label=cols["label"],
            class_names=class_names,
            skipped=list(zip(sk_p, sk_r)),
        )

    # ------------------------------------------------------------------------------------------- sections

    def _section_group(self, layer: str, *names: str) -> h5py.Group | None:
        g = self._entry(layer).group
        for n in names:
            g = get_group(g, n, f"{self._entry(layer).where}", required=False)
            if g is None:
                return None
        return g

    def _renders(self, layer: str) -> _RenderSection | None:
        e = self._entry(layer)
        if "renders" not in e._loaded:
            g = self._section_group(layer, "renders")
            e._renders = None if g is None else _RenderSection(g, layer, e.rec.units, f"{e.where}/renders")
            e._loaded.add("renders")
        return e._renders

    def _examples(self, layer: str, which: str) -> _ExampleSection | None:
        if which not in WHICH:
            raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
        e = self._entry(layer)
        key = f"examples/{which}"
        if key not in e._loaded:
            eg = self._section_group(layer, "examples")
            sec = None
            if eg is not None:
                check_element(eg, ENC_EXAMPLES, f"{e.where}/examples")
                g = get_group(eg, which, f"{e.where}/examples", required=False)
                if g is not None:
                    sec = _ExampleSection(g, layer, e.rec.units, self.n_images, f"{e.where}/{key}")
            e._ex[which] = sec
            e._loaded.add(key)
        return e._ex[which]

    def renders_present(self, layer: str) -> np.ndarray:
        """bool [units]: which units have at least one render."""
        s = self._renders(layer)
        return s.present.copy() if s is not None else np.zeros(self.layer(layer).units, bool)

    def examples_present(self, layer: str, which: str = "top") -> np.ndarray:
        """bool [units]: which units have `which` ('top'/'bottom') dataset examples."""
        s = self._examples(layer, which)
        return s.present.copy() if s is not None else np.zeros(self.layer(layer).units, bool)

    def stats_present(self, layer: str) -> np.ndarray:
        """bool [units]: which units have statistics (reads only the mask, not the statistics)."""
        e = self._entry(layer)
        if "stats" in e._loaded:
            m = np.zeros(e.rec.units, bool)
            if e._stats is not None:
                m[e._stats.units] = True
            return m
        g = self._section_group(layer, "stats")
        if g is None:
            return np.zeros(e.rec.units, bool)
        check_element(g, "scope.stats", f"{e.where}/stats")
        m = read_numeric(get_dataset(g, "present", e.where), f"{e.where}/stats/present", "u", 1).astype(bool)
        if m.shape != (e.rec.units,):
            raise ScopeError(f"{e.where}/stats/present: shape {m.shape}, expected ({e.rec.units},)")
        return m

    def probe_count(self, layer: str) -> int:
        """Number of probe images stored for a layer (0 when none), without reading activations."""
        g = self._section_group(layer, "probe")
        if g is None:
            return 0
        check_element(g, ENC_PROBE, f"{self._entry(layer).where}/probe")
        ds = get_dataset(g, "image_index", "probe")
        return int(ds.shape[0]) if ds.ndim == 1 else 0

    def renders(self, layer: str, units=None) -> list[RenderView]:
        """All renders of a layer (or of the given units), images decoded lazily."""
        s = self._renders(layer)
        if s is None:
            return []
        if units is None:
            return [s.view(i) for i in range(s.n)]
        return [s.view(i) for u in units for i in s.rows_of(int(u))]

    def examples(self, layer: str, which: str = "top") -> ExampleSet | None:
        """The layer's top/bottom ExampleSet; `.patches[u][k]` decodes on access (None where missing)."""
        s = self._examples(layer, which)
        if s is None:
            return None
        return ExampleSet(
            units=s.units.copy(), score=s.score.copy(), image_index=s.image_index.copy(), loc=s.loc.copy(),
            box=s.box.copy(), patches=LazyPatches(s, np.arange(len(s.units))),
        )

    def stats(self, layer: str) -> StatsBlock | None:
        """The layer's activation statistics, or None."""
        e = self._entry(layer)
        if "stats" not in e._loaded:
            g = self._section_group(layer, "stats")
            e._stats = None if g is None else _read_stats(g, e.rec.units, f"{e.where}/stats")
            e._loaded.add("stats")
        return e._stats

    def probe(self, layer: str) -> ProbeBlock | None:
        """Spatial-mean activations of every unit on the probe images, or None."""
        e = self._entry(layer)
        if "probe" not in e._loaded:
            g = self._section_group(layer, "probe")
            e._probe = None if g is None else _read_probe(g, e.rec.units, self.n_images, f"{e.where}/probe")
            e._loaded.add("probe")
        return e._probe

    # ------------------------------------------------------------------------------------------- units

    def unit(self, address: str, index: int | None = None) -> UnitView:
        """Everything about one unit, e.g. `art.unit("layer4.2:117")` (or `art.unit("layer4.2", 117)`)."""
        if index is None:
            layer, index = parse_unit_address(address)
        else:
            layer = address
        rec = self.layer(layer)
        if not 0 <= index < rec.units:
            raise ScopeError(f"unit {index} is out of range for layer {layer!r} (0..{rec.units - 1})")
        rs = self._renders(layer)
        renders = [rs.view(i) for i in rs.rows_of(index)] if rs is not None else []
        examples: dict[str, list[Example]] = {}
        for which in WHICH:
            s = self._examples(layer, which)
            out: list[Example] = []
            row = s.row_of(index) if s is not None else None
            if row is not None:
                blobs = s.row_bytes(row)
                paths = self._image_paths([int(x) for x in s.image_index[row] if x >= 0])
                for k in range(s.k):
                    ii = int(s.image_index[row, k])
                    if ii < 0:
                        continue
                    out.append(Example(
                        layer=layer, unit=index, rank=k, score=float(s.score[row, k]), image_index=ii,
                        image_path=paths.get(ii),
                        loc=(int(s.loc[row, k, 0]), int(s.loc[row, k, 1])),
                        box=tuple(int(x) for x in s.box[row, k]),
                        height=int(s.height[row, k]), width=int(s.width[row, k]), _encoded=blobs[k] or b"",
                    ))
            examples[which] = out
        st = self.stats(layer)
        stats = {}
        if st is not None:
            i = np.searchsorted(st.units, index)
            if i < len(st.units) and st.units[i] == index:
                stats = {
                    "count": int(st.count[i]), "mean": float(st.mean[i]), "std": float(st.std[i]),
                    "min": float(st.min[i]), "max": float(st.max[i]), "frac_pos": float(st.frac_pos[i]),
                }
                for q, v in zip(QUANTILES, st.quantiles[i]):
                    stats[f"p{q * 100:g}"] = float(v)
        return UnitView(layer=layer, index=index, renders=renders, examples=examples, stats=stats)

    def _image_paths(self, indices: list[int]) -> dict[int, str]:
        """Relative paths of some images; small tables are read once, large ones per index."""
        if not indices or self._dataset_group is None:
            return {}
        if self._dataset is not None or (self.n_images or 0) <= PATH_TABLE_LOAD_LIMIT:
            paths = self.dataset.paths
            return {i: paths[i] for i in indices}
        ds = get_dataset(self._dataset_group, "paths", "/dataset")
        check_string_lengths(ds, "/dataset/paths")
        out = {}
        for i in sorted(set(indices)):
            try:
                v = ds[i]
            except (OSError, ValueError) as exc:
                raise ScopeError(f"/dataset/paths: unreadable ({first_line(exc)})")
            out[i] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        return out

    # ------------------------------------------------------------------------------------------- summary

    def info(self) -> dict:
        """A JSON-able summary: format, model, dataset, layers with rendered/collected counts, size."""
        layers = []
        for name in self.layers:
            rec = self.layer(name)
            layers.append({
                "name": name, "units": rec.units, "shape": list(rec.shape),
                "rf_size": rec.rf_size, "rf_stride": rec.rf_stride, "rf_start": rec.rf_start,
                "rendered": int(self.renders_present(name).sum()),
                "renders": len(self._renders(name).cols["unit"]) if self._renders(name) is not None else 0,
                "collected": int(self.examples_present(name, "top").sum()),
                "stats": int(self.stats_present(name).sum()),
                "probe_images": self.probe_count(name),
            })
        ds = None
        if self._dataset_group is not None:
            t = self.dataset
            ds = {"count": len(t), "fingerprint": self.dataset_fingerprint, "classes": len(t.class_names),
                  "skipped": len(t.skipped)}
        return {
            "path": self.path, "format": FORMAT_NAME, "format_version": self.format_version,
            "writer": self.writer, "created": self.created, "modified": self.modified,
            "required_features": self.required_features, "size_bytes": self.size_bytes,
            "model": self.model, "dataset": ds, "layers": layers, "runs": len(self.provenance),
            "commands": [r.get("command") for r in self.provenance if isinstance(r, dict)],
        }


def _read_stats(g: h5py.Group, units: int, where: str) -> StatsBlock:
    check_element(g, "scope.stats", where, h5py.Group)
    u = read_numeric(get_dataset(g, "units", where), f"{where}/units", "i", 1).astype(np.int64)
    n = len(u)
    if n and ((u < 0).any() or (u >= units).any() or (n > 1 and (np.diff(u) <= 0).any())):
        raise ScopeError(f"{where}/units: out of range or not strictly increasing")
    out = {"units": u}
    out["count"] = read_numeric(get_dataset(g, "count", where), f"{where}/count", "i", 1).astype(np.int64)
    for k in ("mean", "std", "min", "max", "frac_pos"):
        out[k] = read_numeric(get_dataset(g, k, where), f"{where}/{k}", "f", 1).astype(np.float64)
    out["quantiles"] = read_numeric(get_dataset(g, "quantiles", where), f"{where}/quantiles", "f", 2).astype(np.float64)
    for k, v in out.items():
        if v.shape[0] != n:
            raise ScopeError(f"{where}/{k}: has {v.shape[0]} rows, expected {n}")
    if out["quantiles"].shape[1] != len(QUANTILES):
        raise ScopeError(f"{where}/quantiles: {out['quantiles'].shape[1]} columns, expected {len(QUANTILES)}")
    sketch, sketch_attrs = {}, {}
    sg = get_group(g, "sketch", where, required=False)
    if sg is not None:
        check_element(sg, ENC_DICT, f"{where}/sketch")
        for name in sg:
            ds = get_dataset(sg, name, f"{where}/sketch")
            if ds.dtype.kind not in "iuf" or ds.ndim < 1 or ds.shape[0] != n:
                raise ScopeError(f"{where}/sketch/{name}: expected a numeric array with {n} rows")
            sketch[name] = read_numeric(ds, f"{where}/sketch/{name}", ds.dtype.kind, ds.ndim)
        for key, val in sg.attrs.items():
            if key in ("encoding-type", "encoding-version"):
                continue
            if isinstance(val, bytes):
                val = val.decode("utf-8", "replace")
            elif isinstance(val, np.generic):
                val = val.item()
            if isinstance(val, (str, int, float)):
                sketch_attrs[key] = val
    return StatsBlock(sketch=sketch, sketch_attrs=sketch_attrs, **out)


def _read_probe(g: h5py.Group, units: int, n_images: int | None, where: str) -> ProbeBlock:
    check_element(g, ENC_PROBE, where, h5py.Group)
    ii = read_numeric(get_dataset(g, "image_index", where), f"{where}/image_index", "i", 1).astype(np.int64)
    acts = read_numeric(get_dataset(g, "acts", where), f"{where}/acts", "f", 2).astype(np.float16)
    if acts.shape != (len(ii), units):
        raise ScopeError(f"{where}/acts: shape {acts.shape}, expected {(len(ii), units)}")
    if len(ii) and ((ii < 0).any() or (ii >= (n_images or 0)).any()):
        raise ScopeError(f"{where}/image_index: index out of range of the image table")
    return ProbeBlock(image_index=ii, acts=acts)


def _corruption_is_clean(fn):
    """Turn errors that libhdf5 raises on damaged metadata (read lazily, long after open) into ScopeError."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except H5_ERRORS as exc:
            if not raised_by_h5py(exc):
                raise
            raise ScopeError(f"{self.path}: unreadable artifact ({type(exc).__name__}: {first_line(exc)}); "
                             "the file is corrupt") from None

    return wrapper


for _name in ("layer", "renders_present", "examples_present", "stats_present", "probe_count", "renders", "examples",
              "stats", "probe", "unit", "info", "_image_paths", "_renders", "_examples"):
    setattr(Artifact, _name, _corruption_is_clean(getattr(Artifact, _name)))
for _name in ("dataset", "spec_text"):
    _prop = getattr(Artifact, _name)
    setattr(Artifact, _name, property(_corruption_is_clean(_prop.fget), doc=_prop.__doc__))
del _name, _prop

_READERS = {1: Artifact}

__all__ = ["Artifact", "Example", "RenderView", "UnitView", "LazyPatches", "open_artifact"]
