"""Read scope artifacts safely and lazily (format 1.x).

Files may come from strangers: the file is opened read-only, the version is checked before anything
else, every element is read by its registered element (`registry.py`), which checks its encoding
type/version and index tables; links that leave the file, virtual/external datasets, unknown filters,
insane sizes and oversized attributes are refused; images are decoded only from PNG/JPEG and checked
against their declared shape, and nothing is ever unpickled. Reading one unit touches only that
unit's bytes (plus the small per-layer index tables, once).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import h5py
import numpy as np

from scopecli.artifact import registry
from scopecli.artifact.elements import dataset as image_table
from scopecli.artifact.elements.examples import Example, LazyPatches
from scopecli.artifact.elements.renders import RenderView
from scopecli.artifact.h5io import (H5_ERRORS, attr_int, attr_str, attr_str_list, check_element, check_global_heaps,
    first_line, get_dataset, get_group, raised_by_h5py, read_attr, read_string, read_strings, short_repr)
from scopecli.artifact.layout import (ENC_LAYER, ENC_LAYERS, ENC_MODEL, ENC_PROVENANCE, ENC_ROOT, ENC_SPEC,
    FORMAT_FEATURES, FORMAT_MAJOR, FORMAT_NAME, HDF5_SIGNATURE, MAX_IMAGES, MAX_ELEMENTS_PER_DIM, MAX_FIELD_PX,
    MAX_UNITS, unescape_name)
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import check_input_file, did_you_mean
from scopecli.core.records import ActivationSample, ExampleSet, ImageTable, UnitSpace, LayerRecord, ProbeBlock, StatsBlock
from scopecli.core.units import parse_unit_address

PATH_TABLE_LOAD_LIMIT = 50_000  # image tables up to this size are read whole for example paths


_REPR: dict[str, object] = {}  # "unit"/"artifact" -> a function giving notebook HTML (scopecli.export.notebook)


def register_repr(kind: str, fn) -> None:
    """Let a higher level (the gallery's pages) give views their notebook display (`_repr_html_`)."""
    _REPR[kind] = fn


def notebook_html(kind: str, obj) -> str | None:
    fn = _REPR.get(kind)
    return None if fn is None else fn(obj)


class LayerView:
    """A layer as Python sees it in a notebook (`art.layer_view(name)`): its record (`.record`: units, shape,
    receptive field, layout) and, in Jupyter, the gallery's grid of its units."""

    def __init__(self, record, artifact_path: str):
        self.record, self.name, self.artifact_path = record, record.name, artifact_path

    def __repr__(self) -> str:
        return f"<layer {self.name} ({self.record.units} units)>"

    def _repr_html_(self) -> str | None:
        """Jupyter: the gallery's grid of this layer's units (after `import scopecli`)."""
        return notebook_html("layer", self)


class UnitView:
    """Everything the artifact holds about one unit: `renders`, `examples` ({'top', 'bottom'}), `stats`,
    and one attribute per further element that describes units (see `registry.LayerElement.unit_field`)."""

    def __init__(self, layer: str, index: int, fields: dict):
        self.layer = layer
        self.index = index
        self.fields = fields

    def __getattr__(self, name: str):
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r} (it has: {', '.join(fields)})")

    def __repr__(self) -> str:
        return f"<unit {self.layer}:{self.index} ({', '.join(self.fields)})>"

    def _repr_html_(self) -> str | None:
        """Jupyter: the gallery's unit page, pictures inline (after `import scopecli`)."""
        return notebook_html("unit", self)


class _Layer:
    """A stored layer: its group, its record, what elements see of it, and the sections parsed so far."""

    def __init__(self, group: h5py.Group, rec: LayerRecord, where: str, n_images: int | None):
        self.group, self.rec = group, rec
        self.slot = registry.LayerSlot(name=rec.name, units=rec.units, where=where, n_images=n_images, record=rec)
        self.sections: dict[str, object] = {}


def _json_load(text: str, where: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ScopeError(f"{where}: invalid JSON ({first_line(exc)})")


def check_scope_file(path, what: str = "artifact") -> str:
    """The path, if it is a readable HDF5 file whose global heaps are sane; else a one-line error."""
    p = check_input_file(path, f"scope {what}")
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
            raise ScopeError(f"{p}: not a scope {what} (not an HDF5 file)")
    check_global_heaps(p)
    return p


def open_artifact(path) -> "Artifact":
    """Open a scope artifact read-only. Refuses non-artifacts, newer major versions and unsafe content.

    Returns an `Artifact`; use it as a context manager or call `.close()`.
    """
    p = check_scope_file(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ScopeError(f"{p}: not a readable HDF5 file ({first_line(exc)}); it may be truncated or corrupt")
    try:
        fmt = read_attr(f, "format", p, None)
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
        if major < 1:
            raise ScopeError(f"{p}: artifact format {version} is not supported")
        return Artifact(f, p, version)
    except ScopeError:
        f.close()
        raise
    except Exception as exc:  # corrupt metadata surfaces as assorted h5py errors
        f.close()
        raise ScopeError(f"{p}: unreadable artifact ({type(exc).__name__}: {first_line(exc)})")


def clean_corruption(cls):
    """Turn errors that libhdf5 raises on damaged metadata (read lazily, long after open) into ScopeError,
    for every public method and property of `cls` (whose instances name their file(s) in `.path`), so no read
    path can leak a traceback. Also for readers built on the artifact's sections (the gallery's page builder)."""

    def wrap(fn):
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

    for name, value in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            setattr(cls, name, property(wrap(value.fget), doc=value.__doc__))
        elif callable(value):
            setattr(cls, name, wrap(value))
    return cls


@clean_corruption
class Artifact:
    """Reader of artifact format 1.x. Metadata is read at open; sections when first asked for; images only
    when asked for. Elements are reached generically (`section`, `unit`) or by the named shortcuts."""

    def __init__(self, f: h5py.File, path: str, version: str):
        self._f = f
        self.path = path
        self.format_version = version
        where = path
        check_element(f, ENC_ROOT, where)
        self.required_features = attr_str_list(f, "required_features", where)
        known = registry.known_features(FORMAT_FEATURES)
        unknown = [x for x in self.required_features if x not in known]
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
        self._dataset: ImageTable | None = None
        self._labels: tuple[np.ndarray, list[str]] | None = None
        dg = get_group(f, image_table.NAME, where, required=False)
        self._dataset_group = dg
        self.dataset_fingerprint: str | None = None
        self.n_images: int | None = None
        if dg is not None:
            check_element(dg, image_table.ENCODING, "/dataset")
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
            shape = np.asarray(read_attr(g, "shape", lw, ()))
            if shape.shape != (3,) or shape.dtype.kind not in "iu" or (shape < 0).any() \
                    or (shape > MAX_ELEMENTS_PER_DIM).any():
                raise ScopeError(f"{lw}: bad shape attribute")
            rec = LayerRecord(
                name=name, units=attr_int(g, "units", lw, 1, MAX_UNITS),
                shape=tuple(int(x) for x in shape),
                rf_size=attr_int(g, "rf_size", lw, 0, MAX_FIELD_PX), rf_stride=attr_int(g, "rf_stride", lw, 0, MAX_FIELD_PX),
                rf_start=attr_int(g, "rf_start", lw, -MAX_FIELD_PX, MAX_FIELD_PX),
            )
            by_name[name] = _Layer(g, rec, lw, self.n_images)
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

    def _repr_html_(self) -> str | None:
        """Jupyter: the gallery's model page of this file (its layers), pictures inline (after `import scopecli`)."""
        return notebook_html("artifact", self)

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

    def _layer(self, layer: str) -> _Layer:
        e = self._layers.get(layer)
        if e is None:
            hint = did_you_mean(layer, self.layers, "layer", None if self.layers else "it has no layers", n=3)
            raise ScopeError(f"layer {layer!r} is not in {os.path.basename(self.path)}{hint}")
        return e

    def layer(self, name: str) -> LayerRecord:
        """The LayerRecord (units, shape, layout, receptive field) of a stored layer (layout None in 1.0 files)."""
        e = self._layer(name)
        if "layout" not in e.sections:
            lay = self.section(name, "layout")
            if lay is not None:
                e.rec = e.slot.record = dataclasses.replace(e.rec, layout=lay)
        return e.rec

    def slot(self, name: str) -> registry.LayerSlot:
        """What elements see of a stored layer (name, units, place in the file, image count)."""
        return self._layer(name).slot

    @property
    def dataset_group(self) -> h5py.Group | None:
        """The HDF5 group of the image table (None when nothing was collected), e.g. to copy it."""
        return self._dataset_group

    @property
    def dataset(self) -> ImageTable | None:
        """The image table of the collect run(s), or None when no dataset was collected."""
        if self._dataset is None and self._dataset_group is not None:
            self._dataset = image_table.read_table(self._dataset_group, self.n_images)
        return self._dataset

    def image_labels(self) -> tuple[np.ndarray, list[str]] | None:
        """(label int32 [N], class names) of the image table without reading its paths (None: no table)."""
        if self._dataset is not None:
            return self._dataset.label, self._dataset.class_names
        if self._dataset_group is None:
            return None
        if self._labels is None:
            self._labels = image_table.read_labels(self._dataset_group, self.n_images)
        return self._labels

    def image_paths(self, indices) -> dict[int, str]:
        """Relative paths of some images; small tables are read once, large ones per index."""
        indices = list(indices)
        if not indices or self._dataset_group is None:
            return {}
        if self._dataset is not None or (self.n_images or 0) <= PATH_TABLE_LOAD_LIMIT:
            paths = self.dataset.paths
            return {i: paths[i] for i in indices}
        return image_table.read_paths(self._dataset_group, indices)

    # ------------------------------------------------------------------------------------------- elements

    def element_group(self, layer: str, name: str) -> h5py.Group | None:
        """The HDF5 group of element `name` of a layer (None when the layer has none)."""
        e = self._layer(layer)
        registry.layer_element(name)
        return get_group(e.group, name, e.slot.where, required=False)

    def section(self, layer: str, name: str):
        """Element `name` of a layer as its element reads it (index tables parsed once), or None."""
        e = self._layer(layer)
        if name not in e.sections:
            g = self.element_group(layer, name)
            e.sections[name] = None if g is None else registry.layer_element(name).read(g, e.slot)
        return e.sections[name]

    def present(self, layer: str, name: str, **options) -> np.ndarray:
        """bool [units]: which units element `name` holds content for (cheap: no image is read)."""
        e = self._layer(layer)
        g = self.element_group(layer, name)
        if g is None:
            return np.zeros(e.rec.units, bool)
        return registry.layer_element(name).present(g, e.slot, e.sections.get(name), **options)

    def renders_present(self, layer: str) -> np.ndarray:
        """bool [units]: which units have at least one render."""
        return self.present(layer, "renders")

    def examples_present(self, layer: str, which: str = "top") -> np.ndarray:
        """bool [units]: which units have `which` ('top'/'bottom') dataset examples."""
        return self.present(layer, "examples", which=which)

    def renders(self, layer: str, units=None) -> list[RenderView]:
        """All renders of a layer (or of the given units), images decoded lazily."""
        s = self.section(layer, "renders")
        if s is None:
            return []
        if units is None:
            return [s.view(i) for i in range(s.n)]
        return [s.view(i) for u in units for i in s.rows_of(int(u))]

    def examples(self, layer: str, which: str = "top") -> ExampleSet | None:
        """The layer's top/bottom ExampleSet; `.patches[u][k]` decodes on access (None where missing)."""
        s = self.section(layer, "examples")
        sec = s.set(which) if s is not None else None
        if s is None and which not in ("top", "bottom"):
            raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
        return None if sec is None else sec.example_set()

    def stats(self, layer: str) -> StatsBlock | None:
        """The layer's activation statistics, or None."""
        return self.section(layer, "stats")

    def layer_view(self, name: str) -> LayerView:
        """The layer `name` for a notebook: its record, and the gallery's unit grid as its display."""
        return LayerView(self.layer(name), self.path)

    def effects(self, layer: str):
        """The layer's class x unit attribution (`elements.effects.EffectsBlock`, format 1.3), or None."""
        s = self.section(layer, "effects")
        return None if s is None else s.block

    def effect_layers(self) -> list[str]:
        """The layers that hold effects, in file order."""
        return [name for name in self.layers if self.element_group(name, "effects") is not None]

    def class_units(self, layer: str, name):
        """A class's top units at `layer` with their importance shares and the ablation evidence
        (`elements.effects.ClassEffects`); `name`: a class name or the model's output index."""
        s = self.section(layer, "effects")
        if s is None:
            raise ScopeError(f"{layer} has no effects in {os.path.basename(self.path)}: run scope effects FILE --data DIR")
        return s.class_effects(layer, name)

    def probe(self, layer: str) -> ProbeBlock | None:
        """Spatial-mean activations of every unit on the probe images, or None."""
        return self.section(layer, "probe")

    def caricatures(self, layer: str) -> list:
        """The layer's caricatures (`scope caricature`): items with `.image`, `.photo` (HxWx3 uint8, decoded
        on access), `.source_sha256`, `.source_name`, `.layer`, `.cosine`, `.magnitude_ratio`; [] if none."""
        s = self.section(layer, "caricatures")
        return [] if s is None else [s.view(i) for i in range(s.n)]

    def atlas(self, layer: str):
        """The layer's activation atlas (`scope atlas`): `.grid`, `.layout`, `.seed` and `.cells`, each with
        `.image` (HxWx3 uint8, decoded on access), `.count`, `.position` (row, col); None when it has none."""
        s = self.section(layer, "atlas")
        return None if s is None else s.view()

    def sample(self, layer: str) -> ActivationSample | None:
        """The layer's activation sample (`collect --sample N`): `.vectors` float32 [S, C], `.image_index`,
        `.positions` [S, 2] (row, col), `.seed`, `.keys`; None when the layer has none."""
        return self.section(layer, "sample")

    @property
    def spaces(self) -> list[dict]:
        """The unit spaces in the file: one dict per space layer (name BASE@SPACE, base, space, method, k)."""
        out = []
        for name in self.layers:
            if self.element_group(name, "space") is None:
                continue
            sp = self.section(name, "space")
            out.append({"name": name, "base": sp.base, "space": sp.name, "method": sp.method, "k": sp.k,
                        "nonlinearity": sp.nonlinearity, "quality": dict(sp.quality)})
        return out

    def space(self, name: str) -> UnitSpace:
        """A unit space by its layer name `BASE@SPACE`, or by `SPACE` alone when one layer has a space of
        that name: `.encoder` [k, C], `.pre_bias`, `.bias`, `.nonlinearity`, `.k_active`, `.decoder`, and
        `.encode(x)` / `.decode(z)` in numpy."""
        if "@" in name:
            if name not in self._layers or self.element_group(name, "space") is None:
                names = [s["name"] for s in self.spaces]
                raise ScopeError(f"no unit space {name!r} in {os.path.basename(self.path)}"
                                 + did_you_mean(name, names, "space", None if names else "it has none", n=3))
            return self.section(name, "space")
        hits = [s["name"] for s in self.spaces if s["space"] == name]
        if len(hits) > 1:
            raise ScopeError(f"space {name!r} is on several layers ({', '.join(hits)}); name one as LAYER@{name}")
        if not hits:
            names = [s["name"] for s in self.spaces]
            raise ScopeError(f"no unit space {name!r} in {os.path.basename(self.path)}"
                             + did_you_mean(name, [s.split("@", 1)[1] for s in names], "space",
                                            None if names else "it has none", n=3))
        return self.section(hits[0], "space")

    # ------------------------------------------------------------------------------------------- units

    def unit(self, address: str, index: int | None = None) -> UnitView:
        """Everything about one unit, e.g. `art.unit("layer4.2:117")` (or `art.unit("layer4.2", 117)`)."""
        if index is None:
            layer, index = parse_unit_address(address)
        else:
            layer = address
        e = self._layer(layer)
        if not 0 <= index < e.rec.units:
            raise ScopeError(f"unit {index} is out of range for layer {layer!r} (0..{e.rec.units - 1})")
        fields = {}
        for el in registry.layer_elements():
            if el.unit_field is not None:
                fields[el.unit_field] = el.unit_value(self.section(layer, el.name), index, e.slot, self)
        view = UnitView(layer, index, fields)
        view.artifact_path = self.path  # where the notebook display reads the pages from
        return view

    # ------------------------------------------------------------------------------------------- summary

    def info(self) -> dict:
        """A JSON-able summary: format, model, dataset, layers with rendered/collected counts, size."""
        layers = []
        for name in self.layers:
            e = self._layer(name)
            row = {"name": name, "units": e.rec.units, "shape": list(e.rec.shape),
                   "rf_size": e.rec.rf_size, "rf_stride": e.rec.rf_stride, "rf_start": e.rec.rf_start}
            for el in registry.layer_elements():
                row.update(el.info(self.element_group(name, el.name), e.slot, e.sections.get(el.name)))
            layers.append(row)
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


__all__ = ["Artifact", "Example", "LazyPatches", "RenderView", "UnitView", "check_scope_file", "clean_corruption",
           "open_artifact"]
