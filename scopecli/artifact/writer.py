"""Write scope artifacts atomically: build the whole new file next to the target, fsync, os.replace.

A kill at any instant leaves either the old file or the new one (a stray `*.h5.tmp*` at worst).
Sections touched in a session are kept in memory (as encoded PNG/JPEG bytes) and written compactly
on close; untouched sections of an existing file are copied over verbatim.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import time
from importlib import resources
from pathlib import PurePath

import h5py
import numpy as np

from scopecli.artifact.h5io import set_encoding, str_list_attr, write_array, write_blob, write_string, write_strings
from scopecli.artifact.images import PATCH_FORMATS, encode_patch, encode_png
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
    ENC_STATS,
    FORMAT_MINOR,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_UNITS,
    dataset_fingerprint,
    escape_name,
)
from scopecli.artifact.reader import ENC_MODEL, WHICH, Artifact, open_artifact
from scopecli.errors import ScopeError
from scopecli.records import QUANTILES, ExampleSet, ImageTable, LayerRecord, ProbeBlock, RenderRecord, StatsBlock

STATS_FIELDS = ("count", "mean", "std", "min", "max", "frac_pos", "quantiles")


def _identity(path: str):
    """What identifies the file at `path` right now (None when absent): detects concurrent replacement."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def spec_texts() -> tuple[str, str]:
    """(SPEC.md text, artifact-1.0.json text) shipped in the scopecli.schema package."""
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
    from scopecli import __version__

    return __version__


def load_render_rows(art: Artifact, layer: str) -> dict[tuple[int, str, int], dict]:
    """All renders of a stored layer as writer rows (PNG bytes kept encoded), keyed (unit, objective, div)."""
    sec = art._renders(layer)
    rows: dict[tuple[int, str, int], dict] = {}
    if sec is None:
        return rows
    blob = sec.blob[()].tobytes() if sec.blob.shape[0] else b""
    for i in range(sec.n):
        v = sec.view(i)
        off, ln = int(sec.cols["offset"][i]), int(sec.cols["length"][i])
        rows[(v.unit, v.objective, v.diversity_index)] = dict(
            png=blob[off : off + ln], height=v.height, width=v.width, seed=v.seed, steps=v.steps,
            size=v.size, param=v.param, lr=v.lr, act_final=v.act_final, act_robust=v.act_robust,
            act_trace=v.act_trace, time_s=v.time_s, dataset_max_ratio=v.dataset_max_ratio,
        )
    return rows


def load_example_rows(art: Artifact, layer: str, which: str) -> tuple[dict[int, dict], set[str], int] | None:
    """Stored top/bottom examples of a layer as writer rows (patches kept encoded), or None."""
    sec = art._examples(layer, which)
    if sec is None:
        return None
    blob = sec.blob[()].tobytes() if sec.blob.shape[0] else b""
    rows = {}
    for row, u in enumerate(sec.units):
        rows[int(u)] = dict(
            score=sec.score[row].copy(), image_index=sec.image_index[row].copy(),
            loc=sec.loc[row].copy(), box=sec.box[row].copy(),
            blobs=[blob[int(o) : int(o) + int(n)] if n > 0 else None for o, n in zip(sec.offset[row], sec.length[row])],
            hw=np.stack([sec.height[row], sec.width[row]], -1).astype(np.int32),
        )
    g = art._section_group(layer, "examples", which)
    fmt = g.attrs.get("patch_format", "jpeg")
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    return rows, {x for x in fmt.split("+") if x in PATCH_FORMATS}, int(g.attrs.get("quality", 90))


class _Renders:
    def __init__(self):
        self.rows: dict[tuple[int, str, int], dict] = {}


class _Examples:
    def __init__(self):
        self.rows: dict[int, dict] = {}
        self.formats: set[str] = set()
        self.quality: int = 90


class _Stats:
    def __init__(self):
        self.rows: dict[int, dict] = {}
        self.sketch_keys: tuple | None = None
        self.sketch_attrs: dict | None = None


class ArtifactWriter:
    """Create or extend one artifact; use as a context manager (commit on clean exit, discard on error).

    `model_info` is `LoadedModel.info()` (must hold a 'fingerprint'); `command` and `params` go into
    the provenance entry of this run. Extending a file written for another model is refused.
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
        self._tmp: str | None = None
        self._open = False
        self._layers: dict[str, LayerRecord] = {}
        self._renders: dict[str, _Renders] = {}
        self._examples: dict[tuple[str, str], _Examples] = {}
        self._stats: dict[str, _Stats] = {}
        self._probe: dict[str, dict[int, np.ndarray]] = {}
        self._dataset: ImageTable | None = None
        self._dataset_fp: str | None = None
        self._timings: dict[str, float] = {}
        self._started = utc_now()
        self._t0 = time.perf_counter()
        self._extra_runs: list[dict] = []  # provenance of merged inputs (pack)
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

    def open(self) -> None:
        """Check the target, open the existing artifact (if any) read-only and claim a temp file next to it."""
        if self._open:
            return
        p = self.path
        parent = os.path.dirname(p) or "."
        if os.path.isdir(p):
            raise ScopeError(f"{p}: is a directory; give a file name such as {os.path.join(p, 'scope.h5')}")
        if not os.path.isdir(parent):
            raise ScopeError(f"{parent}: output directory does not exist")
        self._identity = _identity(p)
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
        try:
            fd, self._tmp = tempfile.mkstemp(prefix=os.path.basename(p) + ".tmp", dir=parent)
            os.close(fd)
        except OSError as exc:
            self._close_existing()
            raise ScopeError(f"{parent}: cannot write there ({exc.strerror or exc})")
        self._open = True

    def _check_extendable(self, art: Artifact) -> None:
        if art.fingerprint != self.model_info["fingerprint"]:
            raise ScopeError(
                f"{self.path} holds model {art.model.get('spec', '?')} (fingerprint {art.fingerprint[:12]}…), "
                f"not this model (fingerprint {self.model_info['fingerprint'][:12]}…); write to another file"
            )
        minor = int(art.format_version.split(".")[1])
        if minor > FORMAT_MINOR:
            raise ScopeError(f"{self.path} was written in format {art.format_version}; upgrade scope to add to it")

    def _close_existing(self) -> None:
        if self.existing is not None:
            self.existing.close()
            self.existing = None

    def abort(self) -> None:
        """Discard this session: remove the temp file, leave the target untouched."""
        self._close_existing()
        if self._tmp and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None
        self._open = False

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
        self._renders, self._examples, self._stats, self._probe = {}, {}, {}, {}
        self._layers, self._dataset, self._dataset_fp = {}, None, None
        self.fresh = False
        self.open()
        self._replace_last_run = True

    def _need_open(self) -> None:
        if not self._open:
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
        new = LayerRecord(rec.name, int(rec.units), shape, int(rec.rf_size), int(rec.rf_stride), int(rec.rf_start))
        old = self._layers.get(rec.name)
        if old is not None:
            if (old.units, tuple(old.shape), old.rf_size, old.rf_stride, old.rf_start) != (
                new.units, new.shape, new.rf_size, new.rf_stride, new.rf_start
            ):
                raise ScopeError(f"layer {rec.name!r} is already stored with units={old.units} shape={tuple(old.shape)} "
                                 f"rf=({old.rf_size},{old.rf_stride},{old.rf_start}); this run has units={new.units} "
                                 f"shape={new.shape} rf=({new.rf_size},{new.rf_stride},{new.rf_start})")
            return
        self._layers[rec.name] = new

    def _layer(self, layer: str) -> LayerRecord:
        self._need_open()
        rec = self._layers.get(layer)
        if rec is None:
            raise ScopeError(f"layer {layer!r} was not declared; call ensure_layer first")
        return rec

    def _renders_of(self, layer: str) -> _Renders:
        st = self._renders.get(layer)
        if st is None:
            st = self._renders[layer] = _Renders()
            if self.existing is not None and layer in self.existing.layers:
                st.rows.update(load_render_rows(self.existing, layer))
        return st

    def put_renders(self, layer: str, recs: list[RenderRecord]) -> None:
        """Store renders (PNG, lossless); replaces any stored render with the same (unit, objective, diversity_index)."""
        rec = self._layer(layer)
        st = self._renders_of(layer)
        for r in recs:
            u = int(r.unit)
            if not -1 <= u < rec.units:
                raise ScopeError(f"render unit {u} is out of range for layer {layer!r} (0..{rec.units - 1}, or -1)")
            if not isinstance(r.objective, str) or not r.objective:
                raise ScopeError(f"render {layer}:{u}: objective must be a non-empty string")
            img = np.asarray(r.image)
            png = encode_png(img, f"render {layer}:{u}")
            st.rows[(u, r.objective, int(r.diversity_index))] = dict(
                png=png, height=img.shape[0], width=img.shape[1], seed=int(r.seed), steps=int(r.steps),
                size=int(r.size), param=str(r.param), lr=float(r.lr), act_final=float(r.act_final),
                act_robust=float(r.act_robust), act_trace=np.asarray(r.act_trace, np.float32).reshape(-1),
                time_s=float(r.time_s), dataset_max_ratio=float(r.dataset_max_ratio),
            )

    def set_dataset(self, table: ImageTable) -> None:
        """Set the image table of a collect run; refuses another dataset when examples/stats/probes exist."""
        self._need_open()
        n = len(table.paths)
        if len(table.sha256) != n or any(len(np.asarray(a).reshape(-1)) != n for a in (table.width, table.height, table.label)):
            raise ScopeError("image table columns have different lengths")
        paths = [str(x) for x in table.paths]
        if any(a >= b for a, b in zip(paths, paths[1:])):
            raise ScopeError("image table paths must be sorted and unique (relative POSIX paths)")
        if any(not isinstance(h, str) or len(h) != 64 for h in table.sha256):
            raise ScopeError("image table sha256 entries must be 64-character hex digests")
        fp = dataset_fingerprint(table.paths, table.sha256)
        if self._dataset_fp is not None and fp != self._dataset_fp and self._has_collected():
            raise ScopeError(
                "this artifact already holds examples/stats/probes of another image set "
                f"(dataset fingerprint {self._dataset_fp[:12]}… vs {fp[:12]}…); write to a new file or use `scope pack` for shards"
            )
        self._dataset = ImageTable(
            paths=[str(p) for p in table.paths], sha256=[str(s) for s in table.sha256],
            width=np.asarray(table.width, np.int32).reshape(-1), height=np.asarray(table.height, np.int32).reshape(-1),
            label=np.asarray(table.label, np.int32).reshape(-1), class_names=[str(c) for c in table.class_names],
            skipped=[(str(a), str(b)) for a, b in table.skipped],
        )
        self._dataset_fp = fp

    def _has_collected(self) -> bool:
        if any(e.rows for e in self._examples.values()) or any(s.rows for s in self._stats.values()) or any(self._probe.values()):
            return True
        art = self.existing
        if art is None:
            return False
        for name in art.layers:
            g = art._entry(name).group
            if any(s in g for s in ("examples", "stats", "probe")):
                return True
        return False

    def _examples_of(self, layer: str, which: str) -> _Examples:
        if which not in WHICH:
            raise ScopeError(f"examples must be 'top' or 'bottom', got {which!r}")
        st = self._examples.get((layer, which))
        if st is None:
            st = self._examples[(layer, which)] = _Examples()
            if self.existing is not None and layer in self.existing.layers:
                loaded = load_example_rows(self.existing, layer, which)
                if loaded is not None:
                    rows, formats, quality = loaded
                    st.rows.update(rows)
                    st.formats.update(formats)
                    st.quality = quality
        return st

    def put_examples(self, layer: str, which: str, ex: ExampleSet, patch_format: str = "jpeg", quality: int = 90) -> None:
        """Store top/bottom examples of some units (patches as JPEG at `quality`, or lossless 'png').

        Replaces the stored examples of those units. Missing examples: image_index -1 (patch None).
        """
        rec = self._layer(layer)
        if patch_format not in PATCH_FORMATS:
            raise ScopeError(f"unknown patch format {patch_format!r}; use one of: {', '.join(PATCH_FORMATS)}")
        st = self._examples_of(layer, which)
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
        if u and ((units < 0).any() or (units >= rec.units).any() or len(set(units.tolist())) != u):
            raise ScopeError(f"examples {layer}/{which}: units must be distinct and within 0..{rec.units - 1}")
        if (ii < -1).any():
            raise ScopeError(f"examples {layer}/{which}: image_index must be >= -1")
        for row in range(u):
            blobs, hw = [], np.zeros((k, 2), np.int32)
            for j in range(k):
                p = ex.patches[row][j]
                if ii[row, j] < 0 or p is None:
                    if ii[row, j] < 0 and p is not None:
                        raise ScopeError(f"examples {layer}/{which}: unit {units[row]} rank {j} has a patch but no image")
                    blobs.append(None)
                    continue
                arr = np.asarray(p)
                blobs.append(encode_patch(arr, patch_format, quality))
                hw[j] = arr.shape[:2]
            st.rows[int(units[row])] = dict(
                score=score[row].copy(), image_index=ii[row].copy(), loc=loc[row].copy(), box=box[row].copy(),
                blobs=blobs, hw=hw,
            )
        st.formats.add(patch_format)
        if patch_format == "jpeg":
            st.quality = int(quality)

    def _put_examples_encoded(self, layer: str, which: str, rows: dict[int, dict], formats: set[str], quality: int) -> None:
        """(pack) Store already-encoded example rows as they are, without re-encoding."""
        self._layer(layer)
        st = self._examples_of(layer, which)
        st.rows.update(rows)
        st.formats.update(formats)
        st.quality = quality

    def _stats_of(self, layer: str) -> _Stats:
        st = self._stats.get(layer)
        if st is None:
            st = self._stats[layer] = _Stats()
            if self.existing is not None and layer in self.existing.layers:
                old = self.existing.stats(layer)
                if old is not None:
                    self._stats_rows(st, old)
        return st

    @staticmethod
    def _stats_rows(st: _Stats, sb: StatsBlock) -> None:
        keys = tuple(sorted(sb.sketch))
        if st.sketch_keys is not None and st.rows and keys != st.sketch_keys:
            raise ScopeError(f"stats sketch arrays {keys} differ from the stored ones {st.sketch_keys}")
        attrs = dict(sb.sketch_attrs)
        if st.sketch_attrs is not None and st.rows and attrs != st.sketch_attrs:
            raise ScopeError("stats sketch settings differ from the stored ones (e.g. histogram bins); recollect the layer")
        st.sketch_keys, st.sketch_attrs = keys, attrs
        for i, u in enumerate(np.asarray(sb.units, np.int64)):
            row = {f: np.asarray(getattr(sb, f))[i] for f in STATS_FIELDS}
            row["sketch"] = {k: np.asarray(v)[i] for k, v in sb.sketch.items()}
            st.rows[int(u)] = row

    def put_stats(self, layer: str, st: StatsBlock) -> None:
        """Store activation statistics of some units (replaces those units' stored statistics)."""
        rec = self._layer(layer)
        units = np.asarray(st.units, np.int64).reshape(-1)
        n = len(units)
        if n and ((units < 0).any() or (units >= rec.units).any() or len(set(units.tolist())) != n):
            raise ScopeError(f"stats {layer}: units must be distinct and within 0..{rec.units - 1}")
        for f in STATS_FIELDS:
            a = np.asarray(getattr(st, f))
            if a.shape[:1] != (n,):
                raise ScopeError(f"stats {layer}: {f} has {a.shape[:1]} rows, expected {n}")
        if np.asarray(st.quantiles).shape != (n, len(QUANTILES)):
            raise ScopeError(f"stats {layer}: quantiles must be [units, {len(QUANTILES)}]")
        for k, v in st.sketch.items():
            if not k or "/" in k or k in (".", ".."):
                raise ScopeError(f"stats {layer}: sketch name {k!r} cannot be stored (no '/', not empty)")
            a = np.asarray(v)
            if a.dtype.kind not in "iuf" or a.ndim < 1 or a.shape[0] != n:
                raise ScopeError(f"stats {layer}: sketch {k!r} must be numeric with {n} rows")
        for k, v in st.sketch_attrs.items():
            if not isinstance(v, (int, float, str, np.integer, np.floating)):
                raise ScopeError(f"stats {layer}: sketch attribute {k!r} must be a number or string")
        self._stats_rows(self._stats_of(layer), st)

    def put_probe(self, layer: str, pb: ProbeBlock) -> None:
        """Store probe activations [P, units] (float16); rows of the same image index are replaced."""
        rec = self._layer(layer)
        ii = np.asarray(pb.image_index, np.int64).reshape(-1)
        acts = np.asarray(pb.acts)
        if acts.shape != (len(ii), rec.units):
            raise ScopeError(f"probe {layer}: acts shape {acts.shape}, expected ({len(ii)}, {rec.units})")
        if len(ii) and (ii < 0).any():
            raise ScopeError(f"probe {layer}: image_index must be >= 0")
        rows = self._probe.get(layer)
        if rows is None:
            rows = self._probe[layer] = {}
            if self.existing is not None and layer in self.existing.layers:
                old = self.existing.probe(layer)
                if old is not None:
                    rows.update({int(i): a for i, a in zip(old.image_index, old.acts)})
        for i, a in zip(ii, acts.astype(np.float16)):
            rows[int(i)] = a

    def add_timing(self, name: str, seconds: float) -> None:
        """Record a timing (seconds) in this run's provenance entry; repeated names add up."""
        self._timings[str(name)] = self._timings.get(str(name), 0.0) + float(seconds)

    # ------------------------------------------------------------------------------------------ commit

    def commit(self) -> None:
        """Write everything to the temp file, flush + fsync, and atomically replace the target."""
        if not self._open:
            return
        try:
            self._check_references()
            self._write(self._tmp)
            self._set_mode(self._tmp)
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._close_existing()
            if _identity(self.path) != self._identity:
                self._save_conflict()
            os.replace(self._tmp, self.path)
            self._tmp = None
            try:
                dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                pass
        except BaseException:
            self.abort()
            raise
        self._open = False

    def _save_conflict(self) -> None:
        """Another process replaced the target while we worked: keep both results, never lose one."""
        stem, ext = os.path.splitext(self.path)
        conflict = f"{stem}.conflict-{os.getpid()}{ext or '.h5'}"
        os.replace(self._tmp, conflict)
        self._tmp = None
        self._open = False
        raise ScopeError(
            f"{self.path} was changed by another process during this run; this run's result is saved as {conflict} "
            f"— merge them with: scope pack {self.path} {conflict} -o {self.path}"
        )

    def _set_mode(self, tmp: str) -> None:
        """mkstemp makes 0600 files: give the result the old file's mode, or the umask default."""
        try:
            mode = os.stat(self.path).st_mode & 0o777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)

    def _n_images(self) -> int | None:
        if self._dataset is not None:
            return len(self._dataset)
        if self.existing is not None:
            return self.existing.n_images
        return None

    def _check_references(self) -> None:
        n = self._n_images()
        for (layer, which), st in self._examples.items():
            for u, row in st.rows.items():
                if (row["image_index"] >= 0).any() and (n is None or row["image_index"].max() >= n):
                    raise ScopeError(f"examples {layer}/{which} unit {u} refer to images beyond the image table "
                                     f"({n or 0} images); call set_dataset with the run's ImageTable")
        for layer, rows in self._probe.items():
            if rows and (n is None or max(rows) >= n):
                raise ScopeError(f"probe {layer} refers to images beyond the image table ({n or 0} images)")

    def _features(self, has_dataset: bool, layers: dict) -> list[str]:
        feats = {"layers", "provenance"}
        if has_dataset:
            feats.add("dataset")
        for g in layers.values():
            for s in ("renders", "examples", "stats", "probe"):
                if s in g:
                    feats.add(s)
            if "renders" in g:
                feats.add("png")
            if "examples" in g:
                for w in WHICH:
                    if w in g["examples"]:
                        fmt = g["examples"][w].attrs.get("patch_format", "")
                        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                        feats.update(x for x in fmt.split("+") if x in PATCH_FORMATS)
        return sorted(feats)

    def _write(self, tmp: str) -> None:
        art = self.existing
        now = utc_now()
        spec_md, spec_json = spec_texts()
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
            g = f.create_group("model")
            set_encoding(g, ENC_MODEL)
            for key in ("spec", "name", "architecture", "weights", "fingerprint"):
                g.attrs[key] = str(model.get(key, ""))
            write_string(g, "info_json", json.dumps(model, sort_keys=True))

            runs = list(art.provenance) if art is not None else []
            if self._replace_last_run and runs:
                runs.pop()  # this run's entry from the previous checkpoint
            else:
                runs.extend(self._extra_runs)
            runs.append({
                "command": self.command, "params": self.params,
                "timings": {k: round(v, 6) for k, v in self._timings.items()},
                "session_s": round(time.perf_counter() - self._t0, 6),
                "scope_version": _version(), "started": self._started, "finished": now,
            })
            g = f.create_group("provenance")
            set_encoding(g, ENC_PROVENANCE)
            write_strings(g, "runs", [json.dumps(r, sort_keys=True, allow_nan=False) for r in runs])

            has_dataset = False
            if self._dataset is not None:
                self._write_dataset(f, self._dataset)
                has_dataset = True
            elif art is not None and art._dataset_group is not None:
                f.copy(art._dataset_group, f, "dataset")
                has_dataset = True

            lg = f.create_group("layers")
            set_encoding(lg, ENC_LAYERS)
            lg.attrs["order"] = str_list_attr(self._layers.keys())
            written = {}
            for name, rec in self._layers.items():
                g = lg.create_group(escape_name(name))
                written[name] = g
                set_encoding(g, ENC_LAYER)
                g.attrs["name"] = name
                g.attrs["units"] = np.int64(rec.units)
                g.attrs["shape"] = np.asarray(rec.shape, np.int64)
                g.attrs["rf_size"] = np.int64(rec.rf_size)
                g.attrs["rf_stride"] = np.int64(rec.rf_stride)
                g.attrs["rf_start"] = np.int64(rec.rf_start)
                old = art._entry(name).group if (art is not None and name in art.layers) else None
                self._write_layer_sections(g, name, rec, old)
            f.attrs["required_features"] = str_list_attr(self._features(has_dataset, written))

    @staticmethod
    def _write_dataset(f: h5py.File, t: ImageTable) -> None:
        g = f.create_group("dataset")
        set_encoding(g, ENC_DATASET)
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

    def _write_layer_sections(self, g: h5py.Group, name: str, rec: LayerRecord, old: h5py.Group | None) -> None:
        # renders
        if name in self._renders:
            if self._renders[name].rows:
                self._write_renders(g, rec, self._renders[name])
        elif old is not None and "renders" in old:
            g.copy(old["renders"], g, "renders")
        # examples
        sets = {w: self._examples.get((name, w)) for w in WHICH}
        if any(s is not None for s in sets.values()):
            eg = None
            for w in WHICH:
                s = sets[w]
                src = None if old is None or "examples" not in old else old["examples"].get(w)
                if s is None and src is None:
                    continue
                if s is not None and not s.rows:
                    continue
                if eg is None:
                    eg = g.create_group("examples")
                    set_encoding(eg, ENC_EXAMPLES)
                if s is not None:
                    self._write_example_set(eg, w, rec, s)
                else:
                    eg.copy(src, eg, w)
        elif old is not None and "examples" in old:
            g.copy(old["examples"], g, "examples")
        # stats
        if name in self._stats:
            if self._stats[name].rows:
                self._write_stats(g, rec, self._stats[name])
        elif old is not None and "stats" in old:
            g.copy(old["stats"], g, "stats")
        # probe
        if name in self._probe:
            if self._probe[name]:
                self._write_probe(g, rec, self._probe[name])
        elif old is not None and "probe" in old:
            g.copy(old["probe"], g, "probe")

    @staticmethod
    def _present(units: int, idx) -> np.ndarray:
        m = np.zeros(units, np.uint8)
        idx = [i for i in idx if i >= 0]
        if idx:
            m[np.asarray(idx, np.int64)] = 1
        return m

    def _write_renders(self, g: h5py.Group, rec: LayerRecord, st: _Renders) -> None:
        rg = g.create_group("renders")
        set_encoding(rg, ENC_RENDERS)
        keys = sorted(st.rows)
        rows = [st.rows[k] for k in keys]
        lengths = np.array([len(r["png"]) for r in rows], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if rows else np.zeros(0, np.int64)
        tl = np.array([len(r["act_trace"]) for r in rows], np.int64)
        to = np.concatenate([[0], np.cumsum(tl)[:-1]]).astype(np.int64) if rows else np.zeros(0, np.int64)
        write_array(rg, "present", self._present(rec.units, [k[0] for k in keys]), np.uint8)
        write_array(rg, "unit", [k[0] for k in keys], np.int64)
        write_strings(rg, "objective", [k[1] for k in keys])
        write_array(rg, "diversity_index", [k[2] for k in keys], np.int32)
        write_array(rg, "offset", offsets, np.int64)
        write_array(rg, "length", lengths, np.int64)
        for col, dt in (("height", np.int32), ("width", np.int32), ("seed", np.int64), ("steps", np.int32),
                        ("size", np.int32), ("lr", np.float64), ("act_final", np.float64), ("act_robust", np.float64),
                        ("time_s", np.float64), ("dataset_max_ratio", np.float64)):
            write_array(rg, col, [r[col] for r in rows], dt)
        write_strings(rg, "param", [r["param"] for r in rows])
        write_array(rg, "trace_offset", to, np.int64)
        write_array(rg, "trace_length", tl, np.int64)
        traces = np.concatenate([r["act_trace"] for r in rows]).astype(np.float32) if rows else np.zeros(0, np.float32)
        write_array(rg, "traces", traces, np.float32)
        write_blob(rg, "blob", b"".join(r["png"] for r in rows))

    def _write_example_set(self, eg: h5py.Group, which: str, rec: LayerRecord, st: _Examples) -> None:
        g = eg.create_group(which)
        set_encoding(g, ENC_EXAMPLE_SET)
        units = sorted(st.rows)
        k = max(len(st.rows[u]["score"]) for u in units)
        n = len(units)
        score = np.full((n, k), np.nan, np.float32)
        ii = np.full((n, k), -1, np.int64)
        loc = np.zeros((n, k, 2), np.int32)
        box = np.zeros((n, k, 4), np.int32)
        off = np.zeros((n, k), np.int64)
        ln = np.zeros((n, k), np.int64)
        hw = np.zeros((n, k, 2), np.int32)
        parts, pos = [], 0
        for i, u in enumerate(units):
            r = st.rows[u]
            kk = len(r["score"])
            score[i, :kk], ii[i, :kk], loc[i, :kk], box[i, :kk], hw[i, :kk] = r["score"], r["image_index"], r["loc"], r["box"], r["hw"]
            for j, b in enumerate(r["blobs"]):
                if b:
                    off[i, j], ln[i, j] = pos, len(b)
                    parts.append(b)
                    pos += len(b)
        g.attrs["k"] = np.int64(k)
        g.attrs["patch_format"] = "+".join(sorted(st.formats)) or "jpeg"
        g.attrs["quality"] = np.int64(st.quality)
        write_array(g, "present", self._present(rec.units, units), np.uint8)
        write_array(g, "units", units, np.int64)
        write_array(g, "score", score, np.float32)
        write_array(g, "image_index", ii, np.int64)
        write_array(g, "loc", loc, np.int32)
        write_array(g, "box", box, np.int32)
        write_array(g, "offset", off, np.int64)
        write_array(g, "length", ln, np.int64)
        write_array(g, "height", hw[..., 0], np.int32)
        write_array(g, "width", hw[..., 1], np.int32)
        write_blob(g, "blob", b"".join(parts))

    def _write_stats(self, g: h5py.Group, rec: LayerRecord, st: _Stats) -> None:
        sg = g.create_group("stats")
        set_encoding(sg, ENC_STATS)
        units = sorted(st.rows)
        rows = [st.rows[u] for u in units]
        sg.attrs["quantile_levels"] = np.asarray(QUANTILES, np.float64)
        write_array(sg, "present", self._present(rec.units, units), np.uint8)
        write_array(sg, "units", units, np.int64)
        write_array(sg, "count", [r["count"] for r in rows], np.int64)
        for f in ("mean", "std", "min", "max", "frac_pos"):
            write_array(sg, f, [r[f] for r in rows], np.float64)
        write_array(sg, "quantiles", np.stack([np.asarray(r["quantiles"], np.float64) for r in rows]), np.float64)
        kg = sg.create_group("sketch")
        set_encoding(kg, ENC_DICT)
        for key in st.sketch_keys or ():
            arr = np.stack([np.asarray(r["sketch"][key]) for r in rows])
            write_array(kg, key, arr, arr.dtype)
        for key, val in (st.sketch_attrs or {}).items():
            kg.attrs[key] = val.item() if isinstance(val, np.generic) else val

    def _write_probe(self, g: h5py.Group, rec: LayerRecord, rows: dict[int, np.ndarray]) -> None:
        pg = g.create_group("probe")
        set_encoding(pg, ENC_PROBE)
        idx = sorted(rows)
        write_array(pg, "present", np.ones(rec.units, np.uint8), np.uint8)
        write_array(pg, "image_index", idx, np.int64)
        write_array(pg, "acts", np.stack([rows[i] for i in idx]).astype(np.float16), np.float16)

