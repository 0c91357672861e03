"""Element `renders` [scope.renders]: feature visualizations of a layer's units, PNG, with their evidence.

One row per (unit, objective, diversity_index), sorted; unit -1 is a layer-wide render (deepdream).
Format 1.1 adds the optional `schedule` column (the optimisation schedule's name); files without it were
all rendered with the `lucid` schedule, which is what they read as.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import field, make_dataclass

import h5py
import numpy as np

from scopecli.artifact.blobs import blob_reader, check_blob, check_sizes, check_spans, pack_offsets, present_mask
from scopecli.artifact.h5io import check_element, get_dataset, read_numeric, read_strings, set_encoding, write_array, write_blob, write_strings
from scopecli.artifact.display import DisplaySpec, for_screen
from scopecli.artifact.images import check_channels, decode_image, encode_png
from scopecli.artifact.registry import (LayerElement, LayerSlot, MergeInput, MergePlan, layer_elements,
    register_layer_element)
from scopecli.core.errors import ScopeError
from scopecli.core.records import PNG, RENDER_COLUMNS, TRACE, RenderRecord, column_fields

SPANS = ("offset", "length", "trace_offset", "trace_length")  # where each row's PNG and trace lie
ROW = tuple(c for c in RENDER_COLUMNS if c.dtype not in (PNG, TRACE))  # one stored dataset per row each


class _LazyImage:
    """The view's image: PNG bytes read, and pixels decoded, on first access; and the render's
    faithfulness evidence (format 1.3 `faithfulness`), which the reader attaches where it exists."""

    _path = None  # PathEvidence of this render's key (set by `RendersElement.unit_value`); None: none stored
    _path_checked = False

    def _evidence(self):
        """The evidence, if it was measured on these very pixels (a render replaced since reads as not measured)."""
        if self._path is not None and not self._path_checked:
            sha = self._path.render_sha256
            if sha and hashlib.sha256(self.encoded).hexdigest() != sha:
                self._path = None
            self._path_checked = True
        return self._path

    @property
    def path_similarity(self) -> float | None:
        """How closely the render drives its unit through the same path as its top dataset examples: mean
        Spearman correlation of the channel vectors at the unit's maximum over this and earlier layers
        (`scope` faithfulness evidence); None when not measured."""
        e = self._evidence()
        return None if e is None or math.isnan(e.similarity) else e.similarity

    @property
    def path_baseline(self) -> float | None:
        """The same figure against another unit's examples (chance level); None when not measured."""
        e = self._evidence()
        return None if e is None or math.isnan(e.baseline) else e.baseline

    @property
    def path_flagged(self) -> bool | None:
        """True when path_similarity <= path_baseline: the picture may not show how the unit responds to
        photos; None when not measured."""
        e = self._evidence()
        return None if e is None or math.isnan(e.similarity) or math.isnan(e.baseline) else bool(e.flagged)

    @property
    def encoded(self) -> bytes:
        """The stored PNG bytes (e.g. to embed in HTML without re-encoding)."""
        if self._encoded is None:
            self._encoded = self._load()
        return self._encoded

    def _repr_png_(self) -> bytes:
        """Jupyter: the picture as a screen shows it (gray, or a false-colour composite of N channels)."""
        pixels = self.image
        return encode_png(for_screen(pixels, DisplaySpec(channels=pixels.shape[2])), "render")

    @property
    def image(self) -> np.ndarray:
        """HxWx3 uint8 pixels, decoded and checked against the declared size."""
        if self._image is None:
            self._image = decode_image(
                self.encoded, self.height, self.width, f"render {self.layer}:{self.unit} ({self.objective})"
            )
        return self._image


# One stored render: its layer and RENDER_COLUMNS (with height and width), the image decoded on first access.
RenderView = make_dataclass("RenderView", [("layer", str)] + column_fields(RENDER_COLUMNS, None, True) + [
    ("_load", object, field(repr=False, default=None)),
    ("_encoded", bytes | None, field(repr=False, default=None)),
    ("_image", np.ndarray | None, field(repr=False, default=None)),
], bases=(_LazyImage,), namespace={"__doc__": "One stored render: RENDER_COLUMNS, `.image` decoded on first access."})
RenderView.__module__ = __name__

# A render as the writer holds it: RENDER_COLUMNS with the image as its PNG bytes (copied, never re-encoded).
StoredRender = make_dataclass("StoredRender", column_fields(RENDER_COLUMNS, "png", True), namespace={
    "__doc__": "A render as the writer holds it: RENDER_COLUMNS, the image as PNG bytes (never re-encoded).",
    "key": property(lambda self: (self.unit, self.objective, self.diversity_index)),
})
StoredRender.__module__ = __name__


def _read_column(g: h5py.Group, where: str, name: str, dtype) -> np.ndarray:
    """One stored column: strings as an object array, integers as int64, floats as float64."""
    ds = get_dataset(g, name, where)
    if dtype is str:
        return np.array(read_strings(ds, f"{where}/{name}"), dtype=object)
    kind = np.dtype(dtype).kind
    return read_numeric(ds, f"{where}/{name}", kind, 1).astype(np.int64 if kind == "i" else np.float64)


def _read_columns(g: h5py.Group, where: str) -> dict[str, np.ndarray]:
    """Every column of the table; one added after 1.0 that the file lacks reads as its default."""
    cols = {name: _read_column(g, where, name, np.int64) for name in SPANS}
    n = len(cols["offset"])
    for c in ROW:
        if c.since != "1.0" and c.name not in g:
            cols[c.name] = np.array([c.default] * n, dtype=object if c.dtype is str else c.dtype)
        else:
            cols[c.name] = _read_column(g, where, c.name, c.dtype)
    for k, v in cols.items():
        if len(v) != n:
            raise ScopeError(f"{where}/{k}: has {len(v)} rows, expected {n}")
    return cols


def _write_columns(rg: h5py.Group, columns, rows) -> None:
    """One dataset per column, in the given order (the stored order: key, spans, numbers, strings)."""
    for c in columns:
        values = [getattr(r, c.name) for r in rows]
        if c.dtype is str:
            write_strings(rg, c.name, values)
        else:
            write_array(rg, c.name, values, c.dtype)


class RenderSection:
    """Index table of one layer's renders (loaded once), and lazy access to their PNG bytes."""

    def __init__(self, g: h5py.Group, slot: LayerSlot):
        where = slot.where + "/renders"
        check_element(g, RendersElement.encoding, where, h5py.Group)
        self.layer, self.where = slot.name, where
        cols = _read_columns(g, where)
        n = len(cols["unit"])
        self.present = read_numeric(get_dataset(g, "present", where), f"{where}/present", "u", 1).astype(bool)
        if self.present.shape != (slot.units,):
            raise ScopeError(f"{where}/present: shape {self.present.shape}, expected ({slot.units},)")
        if n and ((cols["unit"] < -1).any() or (cols["unit"] >= slot.units).any()):
            raise ScopeError(f"{where}/unit: unit index out of range 0..{slot.units - 1}")
        if n > 1 and (np.diff(cols["unit"]) < 0).any():
            raise ScopeError(f"{where}/unit: rows are not sorted by unit")
        self.blob = get_dataset(g, "blob", where)
        check_blob(self.blob, where)
        check_spans(cols["offset"], cols["length"], self.blob.shape[0], where, allow_empty=False)
        check_sizes(cols["height"], cols["width"], where)
        self.traces_ds = get_dataset(g, "traces", where)
        if self.traces_ds.dtype.kind != "f" or self.traces_ds.ndim != 1:
            raise ScopeError(f"{where}/traces: expected a 1-D float array")
        check_spans(cols["trace_offset"], cols["trace_length"], self.traces_ds.shape[0], f"{where}/traces", True)
        self.cols = cols
        self.n = n
        self._read = blob_reader(self.blob, where)
        self._traces = None

    def traces(self) -> np.ndarray:
        if self._traces is None:
            self._traces = read_numeric(self.traces_ds, f"{self.where}/traces", "f", 1).astype(np.float32)
        return self._traces

    def rows_of(self, unit: int) -> range:
        u = self.cols["unit"]
        return range(int(np.searchsorted(u, unit, "left")), int(np.searchsorted(u, unit, "right")))

    def _meta(self, i: int) -> dict:
        """Row i's RENDER_COLUMNS (the image aside) as Python values."""
        toff, tln = int(self.cols["trace_offset"][i]), int(self.cols["trace_length"][i])
        out = {c.name: c.py(self.cols[c.name][i]) for c in ROW}
        out["act_trace"] = self.traces()[toff : toff + tln].copy() if tln else np.zeros(0, np.float32)
        return out

    def view(self, i: int) -> RenderView:
        off, ln = int(self.cols["offset"][i]), int(self.cols["length"][i])
        return RenderView(layer=self.layer, _load=lambda off=off, ln=ln: self._read(off, ln), **self._meta(i))

    def stored(self) -> dict[tuple[int, str, int], StoredRender]:
        """Every row with its PNG bytes (one read of the byte array)."""
        blob = self.blob[()].tobytes() if self.blob.shape[0] else b""
        out = {}
        for i in range(self.n):
            off, ln = int(self.cols["offset"][i]), int(self.cols["length"][i])
            r = StoredRender(png=blob[off : off + ln], **self._meta(i))
            out[r.key] = r
        return out


def _faithfulness(art, slot):
    """The layer's `faithfulness` section (None: the file or layer has none)."""
    if art is None or not any(el.name == "faithfulness" for el in layer_elements()):
        return None
    return art.section(slot.name, "faithfulness")


@register_layer_element
class RendersElement(LayerElement):
    name = "renders"
    encoding = "scope.renders"
    features = ("renders", "png")
    unit_field = "renders"

    def read(self, group, slot):
        return RenderSection(group, slot)

    def present(self, group, slot, section=None):
        return (section or self.read(group, slot)).present.copy()

    def info(self, group, slot, section=None):
        if group is None:
            return {"rendered": 0, "renders": 0}
        sec = section or self.read(group, slot)
        return {"rendered": int(sec.present.sum()), "renders": len(sec.cols["unit"])}

    def unit_value(self, section, unit, slot, art):
        if section is None:
            return []
        views = [section.view(i) for i in section.rows_of(unit)]
        evidence = _faithfulness(art, slot) if views else None
        if evidence is not None:  # format 1.3: each view's path_similarity (None without evidence)
            for v in views:
                v._path = evidence.evidence((v.unit, v.objective, v.diversity_index))
                if v._path is not None:
                    v._evidence()  # checked now (reads the PNG bytes, kept): the file may be closed when it is asked
        return views

    # -- write
    def new(self) -> dict:
        return {}

    def stage(self, section, slot):
        return section.stored()

    def put(self, staged: dict, value: list[RenderRecord], slot, **options) -> None:
        for r in value:
            u = int(r.unit)
            if not -1 <= u < slot.units:
                raise ScopeError(f"render unit {u} is out of range for layer {slot.name!r} (0..{slot.units - 1}, or -1)")
            if not isinstance(r.objective, str) or not r.objective:
                raise ScopeError(f"render {slot.name}:{u}: objective must be a non-empty string")
            img = np.asarray(r.image)
            meta = {c.name: c.convert(getattr(r, c.name)) for c in RENDER_COLUMNS if c.dtype != PNG and not c.derived}
            s = StoredRender(png=encode_png(img, f"render {slot.name}:{u}"), height=img.shape[0], width=img.shape[1],
                             **meta)
            staged[s.key] = s

    def is_empty(self, staged) -> bool:
        return not staged

    def write(self, group, staged: dict, slot) -> None:
        rg = group.create_group(self.name)
        set_encoding(rg, self.encoding, self.version)
        keys = sorted(staged)
        rows = [staged[k] for k in keys]
        offsets, lengths = pack_offsets([len(r.png) for r in rows])
        to, tl = pack_offsets([len(r.act_trace) for r in rows])
        write_array(rg, "present", present_mask(slot.units, [k[0] for k in keys]), np.uint8)
        rest = [c for c in ROW if not c.key]
        _write_columns(rg, [c for c in ROW if c.key], rows)
        write_array(rg, "offset", offsets, np.int64)
        write_array(rg, "length", lengths, np.int64)
        _write_columns(rg, [c for c in rest if c.dtype is not str] + [c for c in rest if c.dtype is str], rows)
        write_array(rg, "trace_offset", to, np.int64)
        write_array(rg, "trace_length", tl, np.int64)
        traces = np.concatenate([r.act_trace for r in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
        write_array(rg, "traces", traces, np.float32)
        write_blob(rg, "blob", b"".join(r.png for r in rows))

    # -- validate
    def check(self, section, slot, art, quick):
        problems = []
        want = np.zeros(slot.units, bool)
        u = section.cols["unit"]
        want[u[u >= 0]] = True
        if not np.array_equal(want, section.present):
            problems.append(f"layer {slot.name}: renders/present disagrees with the render table")
        if not quick:
            for i in range(section.n):
                v = section.view(i)
                try:
                    what = f"layer {slot.name} render row {i}"
                    check_channels(decode_image(v.encoded, v.height, v.width, what), art.model, what)
                except ScopeError as exc:
                    problems.append(str(exc))
        return problems, set(self.features)

    # -- merge: union by (unit, objective, diversity_index); the same key with other pixels is a conflict
    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> dict:
        out: dict = {}
        src: dict = {}
        for inp in inputs:
            for key, row in inp.section.stored().items():
                if key in out and out[key].png != row.png and plan.prefer is None:
                    plan.conflict(f"{slot.name}:{key[0]} render ({key[1]}, {key[2]}) in {plan.names[src[key]]} "
                                  f"and {inp.name}")
                out[key], src[key] = row, inp.index
        return out

