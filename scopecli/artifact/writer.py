"""Write scope artifacts atomically: build the whole new file next to the target, fsync, os.replace.

A kill at any instant leaves either the old file or the new one (a stray `*.h5.tmp*` at worst).
Elements touched in a session are staged in memory by their registered element (as encoded PNG/JPEG
bytes) and written compactly on commit; elements the session did not touch are copied over verbatim.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from importlib import resources
from pathlib import PurePath

import h5py
import numpy as np

from scopecli.artifact import registry
from scopecli.artifact.elements import dataset as image_table
from scopecli.artifact.h5io import set_encoding, str_list_attr, write_string, write_strings
from scopecli.artifact.layout import (ENC_LAYER, ENC_LAYERS, ENC_MODEL, ENC_PROVENANCE, ENC_ROOT, ENC_SPEC,
    CHANNELS_FEATURE, FORMAT_MINOR, FORMAT_NAME, FORMAT_VERSION, input_spec_of, MAX_UNITS, dataset_fingerprint, escape_name)
from scopecli.artifact.reader import Artifact, open_artifact
from scopecli.core.errors import ScopeError
from scopecli.core.version import __version__
from scopecli.core.fileio import AtomicFile, ConcurrentChange
from scopecli.core.records import ExampleSet, ImageTable, LayerRecord, ProbeBlock, RenderRecord, StatsBlock


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def spec_texts() -> tuple[str, str]:
    """(SPEC.md text, artifact-<version>.json text) shipped in the scopecli.schema package."""
    pkg = resources.files("scopecli.schema")
    return (pkg / "SPEC.md").read_text("utf-8"), (pkg / f"artifact-{FORMAT_VERSION}.json").read_text("utf-8")


def _jsonable(obj, home: str):
    """Plain JSON value of params: numpy scalars/arrays, tuples, paths; home directory replaced by '~'."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, home) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v, home) for v in items]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), home)
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), home)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    s = str(obj) if isinstance(obj, (str, PurePath)) else str(obj)
    if home and len(home) > 1 and (s == home or s.startswith(home + os.sep)):
        s = "~" + s[len(home):]
    return s


def _version() -> str:
    return __version__


class ArtifactWriter:
    """Create or extend one artifact; use as a context manager (commit on clean exit, discard on error).

    `model_info` is `LoadedModel.info()` (must hold a 'fingerprint'); `command` and `params` go into
    the provenance entry of this run. Extending a file written for another model is refused.
    Content goes in with `put(layer, element, value, **options)` (or the `put_<element>` shortcuts).
    """

    def __init__(self, path, model_info: dict, command: str, params: dict | None = None, *, fresh: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.fresh = fresh  # True: write a new file even if `path` exists (replaced on commit), e.g. `scope pack`
        if not isinstance(model_info, dict) or not isinstance(model_info.get("fingerprint"), str) or not model_info["fingerprint"]:
            raise ScopeError("model_info must be a dict with a non-empty 'fingerprint' (LoadedModel.info())")
        self.model_info = json.loads(json.dumps(_jsonable(model_info, "")))
        self.command = str(command)
        self.params = _jsonable(params or {}, os.path.expanduser("~"))
        self.existing: Artifact | None = None
        self._out: AtomicFile | None = None
        self._layers: dict[str, LayerRecord] = {}
        self._staged: dict[tuple[str, str], object] = {}  # (layer, element) -> the element's staged content
        self._dataset: ImageTable | None = None
        self._dataset_fp: str | None = None
        self._timings: dict[str, float] = {}
        self._started = utc_now()
        self._t0 = time.perf_counter()
        self._earlier_runs: list[dict] = []  # provenance of merged inputs (pack)
        self._replace_last_run = False  # after a checkpoint the file already holds this run's entry

    # ------------------------------------------------------------------------------------------ session

    def __enter__(self) -> "ArtifactWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    @property
    def is_open(self) -> bool:
        return self._out is not None

    def open(self) -> None:
        """Check the target, open the existing artifact (if any) read-only and claim a temp file next to it."""
        if self.is_open:
            return
        p = self.path
        parent = os.path.dirname(p) or "."
        if os.path.isdir(p):
            raise ScopeError(f"{p}: is a directory; give a file name such as {os.path.join(p, 'scope.h5')}")
        if not os.path.isdir(parent):
            raise ScopeError(f"{parent}: output directory does not exist")
        out = AtomicFile(p, guard=True)
        try:
            if os.path.exists(p) and not self.fresh:
                art = open_artifact(p)
                try:
                    self._check_extendable(art)
                except ScopeError:
                    art.close()
                    raise
                self.existing = art
                for name in art.layers:
                    self._layers[name] = art.layer(name)
                if art.dataset_fingerprint is not None:
                    self._dataset_fp = art.dataset_fingerprint
        except BaseException:
            out.discard()
            raise
        self._out = out

    def _check_extendable(self, art: Artifact) -> None:
        if art.fingerprint != self.model_info["fingerprint"]:
            raise ScopeError(
                f"{self.path} holds model {art.model.get('spec', '?')} (fingerprint {art.fingerprint[:12]}…), "
                f"not this model (fingerprint {self.model_info['fingerprint'][:12]}…); write to another file"
            )
        minor = int(art.format_version.split(".")[1])
        if minor > FORMAT_MINOR:
            raise ScopeError(f"{self.path} was written in format {art.format_version}; upgrade scope to add to it")
        have, new = input_spec_of(art.model), input_spec_of(self.model_info)
        if have != new:
            raise ScopeError(f"{self.path} holds pictures of a {have[0]}-channel {have[1]}-bit input; this run's input is "
                             f"{new[0]}-channel {new[1]}-bit: pass the file's --in-channels/--bit-depth, or write to "
                             "another file")

    def _close_existing(self) -> None:
        if self.existing is not None:
            self.existing.close()
            self.existing = None

    def abort(self) -> None:
        """Discard this session: remove the temp file, leave the target untouched."""
        self._close_existing()
        if self._out is not None:
            self._out.discard()
        self._out = None

    def close(self) -> None:
        """Same as commit (for use without `with`)."""
        self.commit()

    def checkpoint(self) -> None:
        """Commit what was put so far (atomically, like a clean exit) and keep the session open.

        For long runs: a crash after a checkpoint keeps the checkpointed work. The file's provenance
        keeps ONE entry for this run (each checkpoint replaces the previous one). Costs one file rewrite.
        """
        self._need_open()
        self.commit()
        self._staged, self._layers, self._dataset, self._dataset_fp = {}, {}, None, None
        self.fresh = False
        self.open()
        self._replace_last_run = True

    def _need_open(self) -> None:
        if not self.is_open:
            raise ScopeError("ArtifactWriter is not open; use it as `with ArtifactWriter(...) as w:`")

    # ------------------------------------------------------------------------------------------ content

    def ensure_layer(self, rec: LayerRecord) -> None:
        """Declare a layer (idempotent); refuses a different unit count/shape/receptive field."""
        self._need_open()
        if not isinstance(rec.name, str):
            raise ScopeError("layer name must be a string")
        shape = tuple(int(x) for x in rec.shape)
        if len(shape) != 3 or min(shape) < 1 or not 1 <= int(rec.units) <= MAX_UNITS:
            raise ScopeError(f"layer {rec.name!r}: bad shape {rec.shape} / units {rec.units}")
        new = LayerRecord(rec.name, int(rec.units), shape, int(rec.rf_size), int(rec.rf_stride), int(rec.rf_start),
                          rec.layout)
        old = self._layers.get(rec.name)
        if old is not None:
            if (old.units, tuple(old.shape), old.rf_size, old.rf_stride, old.rf_start) != (
                new.units, new.shape, new.rf_size, new.rf_stride, new.rf_start
            ):
                raise ScopeError(f"layer {rec.name!r} is already stored with units={old.units} shape={tuple(old.shape)} "
                                 f"rf=({old.rf_size},{old.rf_stride},{old.rf_start}); this run has units={new.units} "
                                 f"shape={new.shape} rf=({new.rf_size},{new.rf_stride},{new.rf_start})")
            if old.layout is not None and new.layout is not None and old.layout != new.layout:
                raise ScopeError(f"layer {rec.name!r} is already stored with layout {old.layout.describe()} "
                                 f"({old.layout.field}); this run has {new.layout.describe()} ({new.layout.field})")
            if old.layout is not None or new.layout is None:
                return
        self._layers[rec.name] = new
        if new.layout is not None:  # recorded as the layer's `layout` element (format 1.1)
            self._staged[(rec.name, "layout")] = new.layout

    def _slot(self, layer: str) -> registry.LayerSlot:
        self._need_open()
        rec = self._layers.get(layer)
        if rec is None:
            raise ScopeError(f"layer {layer!r} was not declared; call ensure_layer first")
        return registry.LayerSlot(name=layer, units=rec.units, where=f"/layers/{escape_name(layer)}",
                                  n_images=self._n_images(), record=rec)

    def staged(self, layer: str, element: str):
        """The staged content of a layer's element, starting from what the file holds (loaded on first use)."""
        slot = self._slot(layer)
        key = (layer, element)
        if key not in self._staged:
            el = registry.layer_element(element)
            section = None
            if self.existing is not None and layer in self.existing.layers:
                section = self.existing.section(layer, element)
            self._staged[key] = el.new() if section is None else el.stage(section, slot)
        return self._staged[key]

    def put(self, layer: str, element: str, value, **options) -> None:
        """Add `value` to element `element` of `layer` (e.g. put("layer4.2", "renders", [RenderRecord, ...]));
        what it supersedes (the same unit's renders, examples, statistics, ...) is replaced."""
        el = registry.layer_element(element)
        el.put(self.staged(layer, element), value, self._slot(layer), **options)

    def replace(self, layer: str, element: str, staged) -> None:
        """Set an element's whole staged content (e.g. `scope pack` with merged content)."""
        self._slot(layer)
        registry.layer_element(element)
        self._staged[(layer, element)] = staged

    def put_renders(self, layer: str, recs: list[RenderRecord]) -> None:
        """Store renders (PNG, lossless); replaces any stored render with the same (unit, objective, diversity_index)."""
        self.put(layer, "renders", recs)

    def put_examples(self, layer: str, which: str, ex: ExampleSet, patch_format: str = "jpeg", quality: int = 90,
                     per_source: int = 0) -> None:
        """Store top/bottom examples of some units (patches as JPEG at `quality`, or lossless 'png').

        Replaces the stored examples of those units. Missing examples: image_index -1 (patch None).
        per_source: the run kept at most this many examples of one source group per unit (0: no limit).
        """
        self.put(layer, "examples", ex, which=which, patch_format=patch_format, quality=quality, per_source=per_source)

    def put_stats(self, layer: str, st: StatsBlock) -> None:
        """Store activation statistics of some units (replaces those units' stored statistics)."""
        self.put(layer, "stats", st)

    def put_probe(self, layer: str, pb: ProbeBlock) -> None:
        """Store probe activations [P, units] (float16); rows of the same image index are replaced."""
        self.put(layer, "probe", pb)

    def set_dataset(self, table: ImageTable) -> None:
        """Set the image table of a collect run; refuses another dataset when examples/stats/probes exist."""
        self._need_open()
        table = image_table.check_new_table(table)
        fp = dataset_fingerprint(table.paths, table.sha256)
        if self._dataset_fp is not None and fp != self._dataset_fp and self._has_collected():
            raise ScopeError(
                "this artifact already holds examples/stats/probes of another image set "
                f"(dataset fingerprint {self._dataset_fp[:12]}… vs {fp[:12]}…); write to a new file or use `scope pack` for shards"
            )
        self._dataset = table
        self._dataset_fp = fp

    def _has_collected(self) -> bool:
        """Does any element that refers to images hold content (staged now, or in the file)?"""
        image_elements = [el for el in registry.layer_elements() if el.uses_images]
        for (_layer, name), st in self._staged.items():
            el = registry.layer_element(name)
            if el.uses_images and not el.is_empty(st):
                return True
        art = self.existing
        if art is None:
            return False
        return any(art.element_group(layer, el.name) is not None for layer in art.layers for el in image_elements)

    def add_runs(self, runs: list[dict]) -> None:
        """Provenance of earlier runs to keep before this one (`scope pack` keeps its inputs' runs)."""
        self._earlier_runs.extend(runs)

    def add_timing(self, name: str, seconds: float) -> None:
        """Record a timing (seconds) in this run's provenance entry; repeated names add up."""
        self._timings[str(name)] = self._timings.get(str(name), 0.0) + float(seconds)

    # ------------------------------------------------------------------------------------------ commit

    def commit(self) -> None:
        """Write everything to the temp file, flush + fsync, and atomically replace the target."""
        if not self.is_open:
            return
        out = self._out
        try:
            self._check_references()
            self._write(out.tmp)
            self._close_existing()
            out.commit()
        except ConcurrentChange as exc:
            self.abort()
            raise ScopeError(f"{exc} — merge them with: scope pack {self.path} {out.conflict} -o {self.path}") from None
        except BaseException:
            self.abort()
            raise
        self._out = None

    def _n_images(self) -> int | None:
        if self._dataset is not None:
            return len(self._dataset)
        if self.existing is not None:
            return self.existing.n_images
        return None

    def _check_references(self) -> None:
        for (layer, name), st in self._staged.items():
            registry.layer_element(name).check_references(st, self._slot(layer))

    def _write(self, tmp: str) -> None:
        art = self.existing
        now = utc_now()
        spec_md, spec_json = spec_texts()
        feats = {"layers", "provenance"}
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
            set_encoding(f, ENC_ROOT)
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["writer"] = f"scope {_version()}"
            f.attrs["created"] = art.created if art is not None else now
            f.attrs["modified"] = now

            g = f.create_group("spec")
            set_encoding(g, ENC_SPEC)
            write_string(g, "text", spec_md)
            write_string(g, "schema", spec_json)

            model = art.model if art is not None else self.model_info
            if input_spec_of(model) != (3, 8):
                feats.add(CHANNELS_FEATURE)
            g = f.create_group("model")
            set_encoding(g, ENC_MODEL)
            for key in ("spec", "name", "architecture", "weights", "fingerprint"):
                g.attrs[key] = str(model.get(key, ""))
            write_string(g, "info_json", json.dumps(model, sort_keys=True))

            runs = list(art.provenance) if art is not None else []
            if self._replace_last_run and runs:
                runs.pop()  # this run's entry from the previous checkpoint
            else:
                runs.extend(self._earlier_runs)
            runs.append({
                "command": self.command, "params": self.params,
                "timings": {k: round(v, 6) for k, v in self._timings.items()},
                "session_s": round(time.perf_counter() - self._t0, 6),
                "scope_version": _version(), "started": self._started, "finished": now,
            })
            g = f.create_group("provenance")
            set_encoding(g, ENC_PROVENANCE)
            write_strings(g, "runs", [json.dumps(r, sort_keys=True, allow_nan=False) for r in runs])

            if self._dataset is not None:
                image_table.write_table(f, self._dataset)
            elif art is not None and art.dataset_fingerprint is not None:
                f.copy(art.dataset_group, f, image_table.NAME)
            if image_table.NAME in f:
                feats.add(image_table.FEATURE)

            lg = f.create_group("layers")
            set_encoding(lg, ENC_LAYERS)
            lg.attrs["order"] = str_list_attr(self._layers.keys())
            for name, rec in self._layers.items():
                g = lg.create_group(escape_name(name))
                set_encoding(g, ENC_LAYER)
                g.attrs["name"] = name
                g.attrs["units"] = np.int64(rec.units)
                g.attrs["shape"] = np.asarray(rec.shape, np.int64)
                g.attrs["rf_size"] = np.int64(rec.rf_size)
                g.attrs["rf_stride"] = np.int64(rec.rf_stride)
                g.attrs["rf_start"] = np.int64(rec.rf_start)
                feats |= self._write_elements(g, name, art if (art is not None and name in art.layers) else None)
            f.attrs["required_features"] = str_list_attr(sorted(feats))

    def _write_elements(self, g: h5py.Group, layer: str, art: Artifact | None) -> set[str]:
        """Every element of one layer: staged ones written by their element, the rest copied verbatim."""
        feats: set[str] = set()
        slot = self._slot(layer)
        for el in registry.layer_elements():
            key = (layer, el.name)
            if key in self._staged:
                if not el.is_empty(self._staged[key]):
                    el.write(g, self._staged[key], slot)
            else:
                old = art.element_group(layer, el.name) if art is not None else None
                if old is not None:
                    g.copy(old, g, el.name)
            if el.name in g:
                feats |= el.features_in(g[el.name])
        return feats


__all__ = ["ArtifactWriter", "spec_texts", "utc_now"]
