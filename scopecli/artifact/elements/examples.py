"""Element `examples` [scope.examples]: each unit's top and bottom dataset examples with their patches.

Two children, `top` and `bottom` [scope.example-set], each a [units, k] table (score, image, grid
position, receptive-field box) plus JPEG/PNG patches stored back to back. Shards merge exactly: by
score, ties to the lower image index (`scopecli.core.sketch.merge_ranked`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import h5py
import numpy as np

from scopecli.artifact.blobs import blob_reader, check_blob, check_sizes, check_spans, present_mask
from scopecli.artifact.h5io import (attr_int, attr_text, check_element, get_dataset, get_group, read_attr,
    read_numeric, set_encoding, write_array, write_blob)
from scopecli.artifact.display import DisplaySpec, for_screen
from scopecli.artifact.images import PATCH_FORMATS, check_channels, decode_image, encode_patch, encode_png, image_kind
from scopecli.artifact.registry import LayerElement, LayerSlot, MergeInput, MergePlan, register_layer_element, remap_images
from scopecli.core.errors import ScopeError
from scopecli.core.records import ExampleSet
from scopecli.core.sketch import merge_ranked, take_ranked

WHICH = ("top", "bottom")
_READ_GAP = 1 << 16  # bytes between two patches of a unit read at once rather than separately
SET_ENCODING = "scope.example-set"
CROP_RULE = "shown: receptive field (capped at the input) centred, shifted inside the input; patch: shown, shrunk to <= patch_size"


@dataclass(frozen=True)
class Column:
    """A per-example column [U, K, *tail] of an example set: its dtype kind and the value of a missing example.
    Optional columns (format 1.1) may be absent from a set; tail None means any trailing shape."""

    name: str
    dtype: type
    tail: tuple | None
    missing: float
    optional: bool = False


COLUMNS = (
    Column("score", np.float32, (), np.nan),
    Column("image_index", np.int64, (), -1),
    Column("loc", np.int32, (2,), 0),
    Column("box", np.int32, (4,), 0),
    Column("shown", np.int32, (4,), 0, True),  # the window the patch shows (1.1)
    Column("heat", np.uint8, None, 0, True),  # the unit over the grid positions of the shown window (1.1)
    Column("heat_range", np.float32, (2,), np.nan, True),  # (low, high) that heat 0 and 255 stand for
    Column("heat_origin", np.int32, (2,), 0, True),  # grid (row, column) of heat[..., 0, 0]
)
_BY_NAME = {c.name: c for c in COLUMNS}


def encode_heat(heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float heatmaps [..., h, w] (NaN: no example) -> uint8 with per-map (low, high): 1/255 of the range."""
    heat = np.asarray(heat, np.float32)
    flat = heat.reshape(heat.shape[:-2] + (-1,))
    with np.errstate(all="ignore"):
        lo = np.nanmin(np.where(np.isnan(flat), np.inf, flat), axis=-1)
        hi = np.nanmax(np.where(np.isnan(flat), -np.inf, flat), axis=-1)
    ok = np.isfinite(lo) & np.isfinite(hi)
    lo, hi = np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)
    span = np.where(ok & (hi > lo), hi - lo, 1.0)
    with np.errstate(all="ignore"):
        q = np.rint((heat - np.where(ok, lo, 0)[..., None, None]) / span[..., None, None] * 255)
    q = np.nan_to_num(q, nan=0).clip(0, 255).astype(np.uint8)
    return q, np.stack([lo, hi], -1).astype(np.float32)


def decode_heat(q: np.ndarray, rng: np.ndarray) -> np.ndarray | None:
    """One map back to activation units (None when the example has no heatmap)."""
    lo, hi = float(rng[0]), float(rng[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return lo + q.astype(np.float32) * ((hi - lo) / 255.0)


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
    shown: tuple[int, int, int, int] | None = None  # the window the patch shows (format 1.1; None before)
    heat_origin: tuple[int, int] | None = None  # grid (row, column) of heatmap[0, 0]
    heatmap: np.ndarray | None = None  # the unit over the grid positions of the shown window, in activation units
    span: tuple[int, int] = (0, 0)  # (offset, length) of the patch in the layer's byte array: equal spans, one patch
    heat_stored: tuple | None = None  # (uint8 grid, (low, high)) as stored: `heatmap` is decoded from it

    @property
    def encoded(self) -> bytes:
        """The stored JPEG/PNG bytes of the patch (b"" when the run stored no patch)."""
        if self._encoded is None:
            self._encoded = self._load() if self._load is not None else b""
        return self._encoded

    def _repr_png_(self) -> bytes | None:
        """Jupyter: the patch as a screen shows it (gray, or a false-colour composite of N channels)."""
        pixels = self.patch
        if pixels is None:
            return None
        return encode_png(for_screen(pixels, DisplaySpec(channels=pixels.shape[2])), "patch")

    @property
    def patch(self) -> np.ndarray | None:
        """HxWxC receptive-field crop, decoded and checked against the declared size (None if not stored)."""
        if not self.encoded:
            return None
        if self._patch is None:
            self._patch = decode_image(self.encoded, self.height, self.width, f"patch {self.layer}:{self.unit}#{self.rank}")
        return self._patch


class ExampleSection:
    """Index table of one layer's top or bottom examples (loaded once); patches read per unit."""

    def __init__(self, g: h5py.Group, slot: LayerSlot, where: str):
        check_element(g, SET_ENCODING, where, h5py.Group)
        self.layer, self.where = slot.name, where
        self.group = g
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
        self.extra: dict[str, np.ndarray] = {}  # the optional columns this set has
        for col in COLUMNS:
            if not col.optional or get_dataset(g, col.name, where, required=False) is None:
                continue
            ds = get_dataset(g, col.name, where)
            kind = np.dtype(col.dtype).kind
            arr = read_numeric(ds, f"{where}/{col.name}", kind, ds.ndim)
            if arr.shape[:2] != (u, k) or (col.tail is not None and arr.shape[2:] != col.tail) or arr.ndim > 6:
                raise ScopeError(f"{where}/{col.name}: shape {arr.shape} does not fit {u} units x {k} examples")
            self.extra[col.name] = arr.astype(col.dtype)
        if ("heat" in self.extra) != ("heat_range" in self.extra) or ("heat" in self.extra) != ("heat_origin" in self.extra):
            raise ScopeError(f"{where}: heat, heat_range and heat_origin come together")
        self.per_source = attr_int(g, "per_source", where, 0, default=0)
        self.present = _read_present(g, slot, where)
        if u and ((self.units < 0).any() or (self.units >= slot.units).any()):
            raise ScopeError(f"{where}/units: unit index out of range 0..{slot.units - 1}")
        if u > 1 and (np.diff(self.units) <= 0).any():
            raise ScopeError(f"{where}/units: not strictly increasing")
        if self.image_index.size:
            hi = slot.n_images if slot.n_images is not None else 0
            if ((self.image_index < -1) | (self.image_index >= hi)).any():
                raise ScopeError(f"{where}/image_index: index out of range of the image table ({hi} images)")
        self.blob = get_dataset(g, "blob", where)
        check_blob(self.blob, where)
        check_spans(self.offset, self.length, self.blob.shape[0], where, allow_empty=True)
        has = self.length > 0
        if (has & (self.image_index < 0)).any():
            raise ScopeError(f"{where}: a patch is stored for a missing example (image_index -1)")
        check_sizes(self.height[has], self.width[has], where)
        self._read = blob_reader(self.blob, where)
        self._row_of = {int(x): i for i, x in enumerate(self.units)}

    def formats(self) -> tuple[set[str], int]:
        """(patch formats, JPEG quality) the set declares."""
        fmt = attr_text(self.group, "patch_format", self.where, "jpeg")
        quality = read_attr(self.group, "quality", self.where, 90)
        try:
            quality = int(np.asarray(quality).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            quality = 90
        return {x for x in fmt.split("+") if x in PATCH_FORMATS}, quality

    def row_of(self, unit: int) -> int | None:
        return self._row_of.get(unit)

    def patch_bytes(self, row: int, k: int) -> bytes:
        return self._read(int(self.offset[row, k]), int(self.length[row, k]))

    def patch(self, row: int, k: int) -> np.ndarray | None:
        if self.length[row, k] == 0:
            return None
        return decode_image(self.patch_bytes(row, k), int(self.height[row, k]), int(self.width[row, k]),
                            f"patch {self.layer}:{int(self.units[row])}#{k}")

    def row_bytes(self, row: int) -> list[bytes | None]:
        """All encoded patches of one unit, one read per run of nearby spans (a unit's patches are mostly
        stored together; a patch shared with other units may sit elsewhere in the byte array)."""
        ln, offs = self.length[row], self.offset[row]
        out: list[bytes | None] = [None] * self.k
        spans = sorted((int(offs[j]), int(ln[j]), j) for j in np.flatnonzero(ln > 0))
        i = 0
        while i < len(spans):
            lo, hi, j = spans[i][0], spans[i][0] + spans[i][1], i
            while j + 1 < len(spans) and spans[j + 1][0] <= hi + _READ_GAP:
                j += 1
                hi = max(hi, spans[j][0] + spans[j][1])
            chunk = self._read(lo, hi - lo)
            for o, n, col in spans[i : j + 1]:
                out[col] = chunk[o - lo : o - lo + n]
            i = j + 1
        return out

    def example_set(self) -> ExampleSet:
        return ExampleSet(units=self.units.copy(), score=self.score.copy(), image_index=self.image_index.copy(),
                          loc=self.loc.copy(), box=self.box.copy(), patches=LazyPatches(self, np.arange(len(self.units))))

    def staged(self) -> "ExampleRows":
        """Every row with its encoded patches (one read of the byte array)."""
        blob = self.blob[()].tobytes() if self.blob.shape[0] else b""
        formats, quality = self.formats()
        rows = ExampleRows(formats=formats, quality=quality)
        rows.per_source = self.per_source
        for row, u in enumerate(self.units):
            cols = {"score": self.score[row].copy(), "image_index": self.image_index[row].copy(),
                    "loc": self.loc[row].copy(), "box": self.box[row].copy()}
            cols.update({name: arr[row].copy() for name, arr in self.extra.items()})
            rows.rows[int(u)] = StoredExamples(
                cols=cols,
                patches=[blob[int(o) : int(o) + int(n)] if n > 0 else None
                         for o, n in zip(self.offset[row], self.length[row])],
                hw=np.stack([self.height[row], self.width[row]], -1).astype(np.int32),
            )
        return rows

    def optional(self, name: str, row: int, k: int):
        arr = self.extra.get(name)
        return None if arr is None else arr[row, k]


class _RowReader:
    """read(k) -> the encoded patch k of one unit; the first call reads all of the unit's patches at once."""

    def __init__(self, section: ExampleSection, row: int):
        self._s, self._row, self._bytes = section, row, None

    def __call__(self, k: int) -> bytes:
        if self._bytes is None:
            self._bytes = self._s.row_bytes(self._row)
        return self._bytes[k] or b""


class LazyPatches:
    """`ExampleSet.patches` that decodes patch [u][k] only when indexed (None where no example)."""

    def __init__(self, section: ExampleSection, rows: np.ndarray):
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
    def __init__(self, section: ExampleSection, row: int):
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


@dataclass
class StoredExamples:
    """One unit's examples as the writer holds them: per-example columns [k, ...] (see COLUMNS) and the
    encoded patches (None: no patch) with their decoded sizes."""

    cols: dict[str, np.ndarray]
    patches: list[bytes | None]
    hw: np.ndarray  # int32 [k, 2] decoded patch sizes

    @property
    def score(self) -> np.ndarray:
        return self.cols["score"]

    @property
    def image_index(self) -> np.ndarray:
        return self.cols["image_index"]

    def same(self, other: "StoredExamples") -> bool:
        if set(self.cols) != set(other.cols) or self.patches != other.patches:
            return False
        return all(np.array_equal(v, other.cols[k], equal_nan=v.dtype.kind == "f") for k, v in self.cols.items())


@dataclass
class ExampleRows:
    """Staged top (or bottom) set: rows by unit, the patch formats used and the JPEG quality."""

    rows: dict[int, StoredExamples] = field(default_factory=dict)
    formats: set[str] = field(default_factory=set)
    quality: int = 90
    per_source: int = 0  # at most this many examples of one source group per unit (0: no limit)


@dataclass
class ExamplesStage:
    """What the writer holds: the sets put this session (loaded from `stored` on first put); a set never
    put is copied from `stored` as it is, never decoded."""

    stored: "ExamplesSection | None" = None
    sets: dict[str, ExampleRows] = field(default_factory=dict)

    def set(self, which: str) -> ExampleRows:
        if which not in self.sets:
            old = self.stored.set(which) if self.stored is not None else None
            self.sets[which] = old.staged() if old is not None else ExampleRows()
        return self.sets[which]

    def untouched(self) -> dict[str, "ExampleSection"]:
        """Stored sets that this session never put to, by which."""
        if self.stored is None:
            return {}
        return {w: s for w in WHICH if w not in self.sets and (s := self.stored.set(w)) is not None}


def _present_only(group: h5py.Group, slot: LayerSlot, which: str) -> np.ndarray:
    """bool [units]: the units a set holds examples for, read from its `present` mask only (cheap: a server or
    `scope info` opening a large file reads no per-unit table; the tables are checked when first read)."""
    if which not in WHICH:
        raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
    where = slot.where + "/examples"
    check_element(group, ExamplesElement.encoding, where)
    g = get_group(group, which, where, required=False)
    if g is None:
        return np.zeros(slot.units, bool)
    check_element(g, SET_ENCODING, f"{where}/{which}", h5py.Group)
    return _read_present(g, slot, f"{where}/{which}")


def _read_present(g: h5py.Group, slot: LayerSlot, where: str) -> np.ndarray:
    """A set's `present` mask, checked to have one entry per unit of the layer."""
    p = read_numeric(get_dataset(g, "present", where), f"{where}/present", "u", 1).astype(bool)
    if p.shape != (slot.units,):
        raise ScopeError(f"{where}/present: shape {p.shape}, expected ({slot.units},)")
    return p


class ExamplesSection:
    """Both sets of a layer (either may be absent), parsed on first use."""

    def __init__(self, g: h5py.Group, slot: LayerSlot):
        self.where = slot.where + "/examples"
        check_element(g, ExamplesElement.encoding, self.where)
        self.group, self.slot = g, slot
        self._sets: dict[str, ExampleSection | None] = {}

    def set(self, which: str) -> ExampleSection | None:
        if which not in WHICH:
            raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
        if which not in self._sets:
            g = get_group(self.group, which, self.where, required=False)
            self._sets[which] = None if g is None else ExampleSection(g, self.slot, f"{self.where}/{which}")
        return self._sets[which]


def _stack_rows(units: list[int], rows: dict[int, StoredExamples]):
    """(k, {column: [U, k, ...]}, hw [U, k, 2], patches [U][k]) of staged rows: k = the longest row, shorter
    rows padded as missing; an optional column is kept only when every row has it."""
    k = max(len(rows[u].score) for u in units)
    n = len(units)
    names = [c.name for c in COLUMNS if all(c.name in rows[u].cols for u in units)]
    cols = {}
    for name in names:
        col = _BY_NAME[name]
        tail = next(rows[u].cols[name].shape[1:] for u in units)
        cols[name] = np.full((n, k) + tuple(tail), col.missing, col.dtype)
    hw = np.zeros((n, k, 2), np.int32)
    patches: list[list[bytes | None]] = []
    for i, u in enumerate(units):
        r = rows[u]
        kk = len(r.score)
        for name in names:
            cols[name][i, :kk] = r.cols[name]
        hw[i, :kk] = r.hw
        patches.append(list(r.patches) + [None] * (k - kk))
    return k, cols, hw, patches


class _SharedBlob:
    """Encoded patches back to back, each distinct byte string once: add(bytes) -> its offset."""

    def __init__(self):
        self._parts: list[bytes] = []
        self._at: dict[bytes, int] = {}
        self._size = 0

    def add(self, data: bytes) -> int:
        at = self._at.get(data)
        if at is None:
            at = self._at[data] = self._size
            self._parts.append(data)
            self._size += len(data)
        return at

    def bytes(self) -> bytes:
        return b"".join(self._parts)


@register_layer_element
class ExamplesElement(LayerElement):
    name = "examples"
    encoding = "scope.examples"
    features = ("examples",)
    uses_images = True
    unit_field = "examples"

    def read(self, group, slot):
        return ExamplesSection(group, slot)

    def present(self, group, slot, section=None, which: str = "top"):
        if section is None or which not in section._sets:  # the mask alone: no index table is read
            return _present_only(group, slot, which)
        s = section.set(which)
        return s.present.copy() if s is not None else np.zeros(slot.units, bool)

    def info(self, group, slot, section=None):
        return {"collected": 0 if group is None else int(self.present(group, slot, section).sum())}

    def unit_value(self, section, unit, slot, art):
        out: dict[str, list[Example]] = {}
        for which in WHICH:
            s = section.set(which) if section is not None else None
            row = s.row_of(unit) if s is not None else None
            items: list[Example] = []
            if row is not None:
                read = _RowReader(s, row)  # a unit's patches are read together, on first use
                paths = art.image_paths([int(x) for x in s.image_index[row] if x >= 0])
                for k in range(s.k):
                    ii = int(s.image_index[row, k])
                    if ii < 0:
                        continue
                    shown, origin = s.optional("shown", row, k), s.optional("heat_origin", row, k)
                    heat = s.optional("heat", row, k)
                    items.append(Example(
                        layer=slot.name, unit=unit, rank=k, score=float(s.score[row, k]), image_index=ii,
                        image_path=paths.get(ii), loc=(int(s.loc[row, k, 0]), int(s.loc[row, k, 1])),
                        box=tuple(int(x) for x in s.box[row, k]), height=int(s.height[row, k]),
                        width=int(s.width[row, k]), _load=functools.partial(read, k),
                        span=(int(s.offset[row, k]), int(s.length[row, k])),
                        shown=None if shown is None else tuple(int(x) for x in shown),
                        heat_origin=None if origin is None else (int(origin[0]), int(origin[1])),
                        heatmap=None if heat is None else decode_heat(heat, s.optional("heat_range", row, k)),
                        heat_stored=None if heat is None else (heat, s.optional("heat_range", row, k)),
                    ))
            out[which] = items
        return out

    def features_in(self, group) -> set[str]:
        feats = set(self.features)
        for w in WHICH:
            if w in group:
                fmt = attr_text(group[w], "patch_format", w, "") or ""
                feats.update(x for x in fmt.split("+") if x in PATCH_FORMATS)
        return feats

    # -- write
    def new(self) -> ExamplesStage:
        return ExamplesStage()

    def stage(self, section, slot) -> ExamplesStage:
        return ExamplesStage(stored=section)

    def put(self, staged: ExamplesStage, value: ExampleSet, slot, which: str = "top", patch_format: str = "jpeg",
            quality: int = 90, **options) -> None:
        if which not in WHICH:
            raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
        if patch_format not in PATCH_FORMATS:
            raise ScopeError(f"unknown patch format {patch_format!r}; use one of: {', '.join(PATCH_FORMATS)}")
        st = staged.set(which)
        ex, layer = value, slot.name
        units = np.asarray(ex.units, np.int64).reshape(-1)
        u = len(units)
        score = np.asarray(ex.score, np.float32)
        if score.ndim != 2 or score.shape[0] != u:
            raise ScopeError(f"examples {layer}/{which}: score must be [units, k], got {score.shape}")
        k = score.shape[1]
        ii = np.asarray(ex.image_index, np.int64)
        loc = np.asarray(ex.loc, np.int32)
        box = np.asarray(ex.box, np.int32)
        for name, arr, shape in (("image_index", ii, (u, k)), ("loc", loc, (u, k, 2)), ("box", box, (u, k, 4))):
            if arr.shape != shape:
                raise ScopeError(f"examples {layer}/{which}: {name} has shape {arr.shape}, expected {shape}")
        if len(ex.patches) != u or any(len(row) != k for row in ex.patches):
            raise ScopeError(f"examples {layer}/{which}: patches must be a [units][k] list")
        if u and ((units < 0).any() or (units >= slot.units).any() or len(set(units.tolist())) != u):
            raise ScopeError(f"examples {layer}/{which}: units must be distinct and within 0..{slot.units - 1}")
        if (ii < -1).any():
            raise ScopeError(f"examples {layer}/{which}: image_index must be >= -1")
        cols = {"score": score, "image_index": ii, "loc": loc, "box": box}
        if ex.shown is not None:
            cols["shown"] = np.asarray(ex.shown, np.int32)
        if ex.heat is not None:
            heat = np.asarray(ex.heat, np.float32)
            if heat.ndim != 4 or heat.shape[:2] != (u, k) or ex.heat_origin is None:
                raise ScopeError(f"examples {layer}/{which}: heat must be [units, k, rows, cols] with heat_origin")
            cols["heat"], cols["heat_range"] = encode_heat(heat)
            cols["heat_origin"] = np.asarray(ex.heat_origin, np.int32)
        for name in ("shown", "heat_origin"):
            want = (u, k) + _BY_NAME[name].tail
            if name in cols and cols[name].shape != want:
                raise ScopeError(f"examples {layer}/{which}: {name} has shape {cols[name].shape}, expected {want}")
        per_source = int(options.get("per_source", 0) or 0)
        if st.rows and per_source != st.per_source:
            raise ScopeError(f"examples {layer}/{which}: stored with at most {st.per_source} per source group, this "
                             f"run keeps {per_source}; write to a new file")
        st.per_source = per_source
        encoded: dict[tuple, bytes] = {}  # an image's window is often the example of several units: encode once
        for row in range(u):
            blobs, hw = [], np.zeros((k, 2), np.int32)
            prow = ex.patches[row]  # one read per row: collect cuts a row's patches when it is read
            for j in range(k):
                p = prow[j]
                if ii[row, j] < 0 or p is None:
                    if ii[row, j] < 0 and p is not None:
                        raise ScopeError(f"examples {layer}/{which}: unit {units[row]} rank {j} has a patch but no image")
                    blobs.append(None)
                    continue
                arr = np.asarray(p)
                key = (arr.shape, arr.dtype.str, hashlib.sha256(np.ascontiguousarray(arr).data).digest())
                if key not in encoded:
                    encoded[key] = encode_patch(arr, patch_format, quality)
                blobs.append(encoded[key])
                hw[j] = arr.shape[:2]
            st.rows[int(units[row])] = StoredExamples({name: arr[row].copy() for name, arr in cols.items()}, blobs, hw)
        kinds = {image_kind(b) for b in encoded.values()} or {patch_format}  # N-channel patches are PNG whatever asked
        st.formats |= kinds
        if "jpeg" in kinds:
            st.quality = int(quality)

    def is_empty(self, staged: ExamplesStage) -> bool:
        return not any(s.rows for s in staged.sets.values()) and not staged.untouched()

    def check_references(self, staged: ExamplesStage, slot) -> None:
        n = slot.n_images
        for which, st in staged.sets.items():
            for u, row in st.rows.items():
                if (row.image_index >= 0).any() and (n is None or row.image_index.max() >= n):
                    raise ScopeError(f"examples {slot.name}/{which} unit {u} refer to images beyond the image table "
                                     f"({n or 0} images); call set_dataset with the run's ImageTable")

    def write(self, group, staged: ExamplesStage, slot) -> None:
        """Each set's table; the patches of the sets written here go into ONE byte array, each distinct
        patch once (an image's window is the top or bottom example of many units): the first set holds
        it, the other links to the same dataset (an HDF5 hard link: any reader sees two plain arrays)."""
        eg = group.create_group(self.name)
        set_encoding(eg, self.encoding, self.version)
        untouched = staged.untouched()
        shared = _SharedBlob()
        first = None
        for w in WHICH:
            st = staged.sets.get(w)
            if st is not None and st.rows:
                g = self._write_set(eg, w, slot, st, shared)
                first = first or g
            elif w in untouched:
                eg.copy(untouched[w].group, eg, w)
        if first is not None:
            write_blob(first, "blob", shared.bytes())
            for w in WHICH:
                if w in eg and eg[w] is not first and "blob" not in eg[w]:
                    eg[w]["blob"] = first["blob"]

    def _write_set(self, eg, which: str, slot: LayerSlot, st: ExampleRows, shared: "_SharedBlob") -> h5py.Group:
        g = eg.create_group(which)
        set_encoding(g, SET_ENCODING, self.version)
        units = sorted(st.rows)
        k, cols, hw, patches = _stack_rows(units, st.rows)
        n = len(units)
        off = np.zeros((n, k), np.int64)
        ln = np.zeros((n, k), np.int64)
        for i in range(n):
            for j, b in enumerate(patches[i]):
                if b:
                    off[i, j], ln[i, j] = shared.add(b), len(b)
        g.attrs["k"] = np.int64(k)
        g.attrs["patch_format"] = "+".join(sorted(st.formats)) or "jpeg"
        g.attrs["quality"] = np.int64(st.quality)
        if "shown" in cols:
            g.attrs["crop_rule"] = CROP_RULE
            g.attrs["per_source"] = np.int64(st.per_source)
        write_array(g, "present", present_mask(slot.units, units), np.uint8)
        write_array(g, "units", units, np.int64)
        for name, arr in cols.items():
            write_array(g, name, arr, _BY_NAME[name].dtype)
        write_array(g, "offset", off, np.int64)
        write_array(g, "length", ln, np.int64)
        write_array(g, "height", hw[..., 0], np.int32)
        write_array(g, "width", hw[..., 1], np.int32)
        return g

    # -- validate
    def check(self, section, slot, art, quick):
        problems, used = [], set()
        for which in WHICH:
            try:
                sec = section.set(which)
            except ScopeError as exc:
                problems.append(str(exc))
                continue
            if sec is None:
                continue
            used.add("examples")
            want = np.zeros(slot.units, bool)
            want[sec.units] = True
            if not np.array_equal(want, sec.present):
                problems.append(f"layer {slot.name}: examples/{which}/present disagrees with its units")
            if quick:
                continue
            for row in range(len(sec.units)):
                for k in range(sec.k):
                    if sec.length[row, k] == 0:
                        continue
                    data = sec.patch_bytes(row, k)
                    used.add(image_kind(data) or "?")
                    what = f"layer {slot.name} {which} patch unit {int(sec.units[row])} rank {k}"
                    try:
                        check_channels(decode_image(data, int(sec.height[row, k]), int(sec.width[row, k]), what),
                                       art.model, what)
                    except ScopeError as exc:
                        problems.append(str(exc))
        return problems, used

    # -- merge: disjoint image sets (shards) merge exactly; other overlaps are conflicts unless prefer=last
    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> ExamplesStage:
        out = ExamplesStage()
        for which in WHICH:
            merged: dict[int, StoredExamples] = {}
            src: dict[int, list[int]] = {}
            formats, quality, per_source = set(), 90, 0
            for inp in inputs:
                sec = inp.section.set(which)
                if sec is None:
                    continue
                st = sec.staged()
                formats |= st.formats
                quality, per_source = st.quality, st.per_source
                for r in st.rows.values():
                    r.cols["image_index"] = remap_images(r.image_index, inp.image_map)
                to_merge = []
                for u in sorted(st.rows):
                    if u not in merged:
                        continue
                    if merged[u].same(st.rows[u]):
                        continue
                    if all(plan.disjoint(j, inp.index) for j in src[u]):
                        to_merge.append(u)
                    elif plan.prefer == "last":
                        merged[u], src[u] = st.rows[u], [inp.index]
                    else:
                        plan.conflict(f"{slot.name}:{u} {which} examples in {plan.names[src[u][-1]]} and {inp.name} "
                                      "(overlapping images)")
                for u in to_merge:
                    merged[u] = _merge_rows(merged[u], st.rows[u], which == "top", plan.image_groups, st.per_source)
                    src[u].append(inp.index)
                for u, r in st.rows.items():
                    if u not in src:
                        merged[u], src[u] = r, [inp.index]
            if merged:
                out.sets[which] = ExampleRows(rows=merged, formats=formats, quality=quality, per_source=per_source)
        return out


def _merge_rows(a: StoredExamples, b: StoredExamples, largest: bool, groups=None, per_source: int = 0) -> StoredExamples:
    """The best k of two stored rows of one unit (k = the longer), exactly as one run would rank them;
    every per-example column follows the picks."""
    k = max(len(a.score), len(b.score))
    _, cols, hw, patches = _stack_rows([0, 1], {0: a, 1: b})
    cat = lambda x: x.reshape((1, -1) + x.shape[2:])  # noqa: E731  (both rows side by side as candidates)
    picks = merge_ranked(cat(cols["score"]), cat(cols["image_index"]), k, largest, groups, per_source)
    flat = patches[0] + patches[1]
    return StoredExamples(
        {name: take_ranked(cat(arr), picks, _BY_NAME[name].missing)[0].astype(_BY_NAME[name].dtype)
         for name, arr in cols.items()},
        [flat[i] if i >= 0 else None for i in picks[0]], take_ranked(cat(hw), picks, 0)[0].astype(np.int32),
    )
