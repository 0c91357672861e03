"""`scope validate`: check a scope file against its schema (schema/*.json), every checksum and every image.

Returns a list of problems (empty = valid) instead of stopping at the first one, so a user who got a
broken file from someone can say exactly what is wrong with it. Every file scope writes is checked:
artifacts and diff files (`registry.file_format`); artifact elements not described by the shipped
schema are checked against the schema node their registered element carries.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources

import h5py
import numpy as np

from scopecli.artifact import registry
from scopecli.artifact.h5io import (attr_text, check_dataset_storage, check_string_lengths, encoding_of, first_line,
    raised_by_h5py, read_attr, short_repr)
from scopecli.artifact.layout import ENC_LAYER, FORMAT_NAME, FORMAT_VERSION, canonical_bytes_sha256
from scopecli.artifact.elements import dataset as image_table
from scopecli.artifact.reader import check_scope_file, open_artifact
from scopecli.artifact.registry import FileFormat, file_format
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import check_input_file

MAX_PROBLEMS = 200


def load_schema(name: str = f"artifact-{FORMAT_VERSION}.json") -> dict:
    """A machine-readable schema shipped in scopecli.schema (default: this scope's artifact format)."""
    text = (resources.files("scopecli.schema") / name).read_text("utf-8")
    return json.loads(text)


_DTYPES = {
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "uint8": np.dtype("u1"), "uint64": np.dtype("<u8"), "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
}


class _Walker:
    """Structure check of one file against the schema tree."""

    def __init__(self, schema: dict, strict_extras: bool):
        self.schema = schema
        self.defs = schema.get("definitions", {})
        self.strict = strict_extras
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.datasets: list[tuple[str, h5py.Dataset]] = []

    def problem(self, msg: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(msg)

    def node(self, spec: dict) -> dict:
        return self.defs[spec["$ref"]] if "$ref" in spec else spec

    def element_node(self, spec: dict, name: str) -> dict | None:
        """The schema node a registered layer element carries, for a layer child the shipped schema lacks."""
        if spec.get("encoding-type") != ENC_LAYER:
            return None
        try:
            el = registry.layer_element(name)
        except ScopeError:
            return None
        return el.schema

    def check_encoding(self, obj, spec: dict, where: str) -> None:
        t, v = encoding_of(obj, where)
        if t != spec.get("encoding-type"):
            self.problem(f"{where}: encoding-type {t!r}, expected {spec.get('encoding-type')!r}")
        if not (isinstance(v, str) and re.fullmatch(r"[0-9]+\.[0-9]+", v)):
            self.problem(f"{where}: missing or bad encoding-version {v!r}")

    def check_attrs(self, obj, spec: dict, where: str, scope: dict) -> None:
        known = set(spec.get("attrs", {})) | {"encoding-type", "encoding-version", "sha256"}
        for name, a in spec.get("attrs", {}).items():
            if name not in obj.attrs:
                if a.get("required", True):
                    self.problem(f"{where}: missing attribute {name!r}")
                continue
            try:
                val = read_attr(obj, name, where)
            except ScopeError as exc:  # unreadable or oversized attribute
                self.problem(str(exc))
                continue
            self.check_attr_value(val, a, f"{where}@{name}", scope)
        if not spec.get("any_attrs"):
            for name in obj.attrs:
                if name not in known:
                    (self.problem if self.strict else self.notes.append)(f"{where}: unknown attribute {name!r}")

    def check_attr_value(self, val, a: dict, where: str, scope: dict) -> None:
        t = a["type"]
        if isinstance(val, bytes):
            val = val.decode("utf-8", "replace")
        if t == "str":
            if not isinstance(val, str):
                return self.problem(f"{where}: expected a string, found {type(val).__name__}")
            if "value" in a and val != a["value"]:
                return self.problem(f"{where}: is {val!r}, expected {a['value']!r}")
            if "pattern" in a and not re.fullmatch(a["pattern"], val):
                return self.problem(f"{where}: {val!r} does not match {a['pattern']}")
        elif t == "int":
            if isinstance(val, np.ndarray) and val.shape == (1,):
                val = val[0]
            if not isinstance(val, (int, np.integer)) or isinstance(val, (bool, np.bool_)):
                return self.problem(f"{where}: expected an integer, found {type(val).__name__}")
            if ("min" in a and val < a["min"]) or ("max" in a and val > a["max"]):
                return self.problem(f"{where}: {int(val)} is outside {a.get('min')}..{a.get('max')}")
            if "binds" in a:
                scope[a["binds"]] = int(val)
        elif t == "float":
            if isinstance(val, np.ndarray) and val.shape == (1,):
                val = val[0]
            if not isinstance(val, (float, np.floating, int, np.integer)) or isinstance(val, (bool, np.bool_)):
                return self.problem(f"{where}: expected a number, found {type(val).__name__}")
        elif t == "bool":
            if not isinstance(val, (bool, np.bool_)):
                return self.problem(f"{where}: expected a boolean, found {type(val).__name__}")
        elif t in ("int[]", "float[]", "str[]"):
            arr = np.asarray(val)
            if arr.ndim != 1:
                return self.problem(f"{where}: expected a 1-D list")
            kind_ok = {"int[]": "iu", "float[]": "f", "str[]": "OUS"}[t]
            if arr.size and arr.dtype.kind not in kind_ok:
                return self.problem(f"{where}: expected {t}, found {arr.dtype}")
            if "len" in a and arr.shape[0] != a["len"]:
                return self.problem(f"{where}: has {arr.shape[0]} items, expected {a['len']}")
            if t == "int[]" and "min" in a and arr.size and arr.min() < a["min"]:
                return self.problem(f"{where}: values below {a['min']}")
            if t == "str[]" and "allowed" in a:
                allowed = set(a["allowed"])
                if where.endswith("@required_features"):  # registered elements bring their own features
                    allowed |= registry.known_features(())
                vals = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr]
                bad = [x for x in vals if x not in allowed]
                if bad:
                    return self.problem(f"{where}: unknown values {bad}")

    def group(self, g: h5py.Group, spec: dict, where: str, scope: dict) -> None:
        scope = dict(scope)
        self.check_encoding(g, spec, where)
        self.check_attrs(g, spec, where, scope)
        children = spec.get("children", {})
        any_child = spec.get("any_child")
        names = []
        for name in g:
            link = g.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                self.problem(f"{where}/{name}: {type(link).__name__} is not allowed")
                continue
            names.append(name)
        for name, child in children.items():
            child = self.node(child)
            if name not in names and child.get("required", True):
                self.problem(f"{where}: missing {child['kind']} {name!r}")
        # datasets first so their symbols bind before subgroups use them
        ordered = sorted(names, key=lambda n: isinstance(g[n], h5py.Group))
        for name in ordered:
            obj = g[name]
            child = children.get(name) or any_child or self.element_node(spec, name)
            path = f"{where.rstrip('/')}/{name}"
            if child is None:
                (self.problem if self.strict else self.notes.append)(f"{path}: not described by the format")
                continue
            child = self.node(child)
            if "name_pattern" in child and not re.fullmatch(child["name_pattern"], name):
                (self.problem if self.strict else self.notes.append)(f"{path}: not described by the format")
                continue
            if child["kind"] == "group":
                if not isinstance(obj, h5py.Group):
                    self.problem(f"{path}: expected a group, found a dataset")
                else:
                    self.group(obj, child, path, scope)
            else:
                if not isinstance(obj, h5py.Dataset):
                    self.problem(f"{path}: expected a dataset, found a group")
                else:
                    self.dataset(obj, child, path, scope)

    def dataset(self, ds: h5py.Dataset, spec: dict, where: str, scope: dict) -> None:
        self.check_encoding(ds, spec, where)
        for name in ds.attrs:
            if name not in ("encoding-type", "encoding-version", "sha256"):
                (self.problem if self.strict else self.notes.append)(f"{where}: unknown attribute {name!r}")
        sha = attr_text(ds, "sha256", where)
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            self.problem(f"{where}: missing or bad sha256 attribute")
        try:
            check_dataset_storage(ds, where)  # virtual/external storage, filters, insane or bomb sizes
        except ScopeError as exc:
            return self.problem(str(exc))
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        want = spec["dtype"]
        dt = ds.dtype
        if want == "str":
            info = h5py.check_string_dtype(dt)
            if info is None or info.length is not None or info.encoding != "utf-8":
                return self.problem(f"{where}: expected variable-length UTF-8 strings, found {dt}")
        elif want == "numeric":
            if dt.kind not in "iuf":
                return self.problem(f"{where}: expected numbers, found {dt}")
        elif dt.kind != _DTYPES[want].kind or dt.itemsize != _DTYPES[want].itemsize:
            return self.problem(f"{where}: dtype {dt}, expected {want}")
        if ds.shape is None:
            return self.problem(f"{where}: null dataspace")
        shape = list(spec["shape"])
        tail = bool(shape) and shape[-1] == "..."
        if tail:
            shape = shape[:-1]
        if (len(ds.shape) != len(shape)) if not tail else (len(ds.shape) < len(shape)):
            return self.problem(f"{where}: rank {len(ds.shape)} (shape {ds.shape}), expected {spec['shape']}")
        for i, (d, s) in enumerate(zip(ds.shape, shape)):
            if s == "*":
                continue
            if isinstance(s, int):
                if d != s:
                    self.problem(f"{where}: dimension {i} is {d}, expected {s}")
            elif s in scope:
                if d != scope[s]:
                    self.problem(f"{where}: dimension {i} is {d}, expected {s}={scope[s]}")
            else:
                scope[s] = d
        if dt.kind in "iuf" and ds.size > 0:
            if ds.chunks is None or h5py.h5z.FILTER_FLETCHER32 not in filters:
                self.problem(f"{where}: non-empty numeric data must be chunked with fletcher32")
        self.datasets.append((where, ds))


def validate(path, quick: bool = False) -> list[str]:
    """Problems found in the scope file at `path` (empty list: valid): an artifact or a diff file.

    quick=True checks structure, attributes and index tables only; the full check also verifies
    every dataset's sha256 (and fletcher32) and decodes every image against its declared shape.
    """
    p = check_input_file(path, "scope file")
    try:
        check_scope_file(p)
        f = h5py.File(p, "r")
    except ScopeError as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"{p}: not a readable HDF5 file ({first_line(exc)}); it may be truncated or corrupt"]
    fmt = None
    try:
        fmt, problems = _structure_problems(f, p, quick)
    except ScopeError as exc:
        problems = [str(exc)]
    except Exception as exc:  # corrupt metadata anywhere surfaces as assorted h5py errors
        if not raised_by_h5py(exc):
            raise
        problems = [f"{p}: unreadable structure ({type(exc).__name__}: {first_line(exc)})"]
    finally:
        f.close()
    if problems or fmt is None:
        return problems
    return fmt.check(p, quick)


def _structure_problems(f: h5py.File, p: str, quick: bool) -> tuple[FileFormat | None, list[str]]:
    """The file's format, and its problems from the format/version check, the schema walk and (full
    check) every dataset's checksum; [] when all is well."""
    fmt_name = attr_text(f, "format", p)
    fmt = file_format(fmt_name)
    if fmt is None:
        return None, [f"{p}: not a scope artifact (HDF5 file without format={FORMAT_NAME!r})"]
    ver = attr_text(f, "format_version", p)
    m = re.fullmatch(r"([0-9]+)\.([0-9]+)", ver) if isinstance(ver, str) else None
    if m is None:
        return None, [f"{p}: bad format_version {short_repr(ver)}"]
    major, minor = int(m.group(1)), int(m.group(2))
    if major > fmt.major:
        return None, [f"{p}: {fmt.what} format {ver} is newer than this scope validates ({fmt.major}.x); upgrade scope"]
    walker = _Walker(load_schema(fmt.schema), strict_extras=minor <= fmt.minor)
    try:
        walker.group(f, walker.schema["root"], "/", {})
    except ScopeError as exc:
        walker.problem(str(exc))
    except Exception as exc:  # corrupt metadata
        walker.problem(f"{p}: unreadable structure ({type(exc).__name__}: {first_line(exc)})")
    problems = walker.problems
    if not quick:
        for where, ds in walker.datasets:
            want = attr_text(ds, "sha256", where)
            try:
                check_string_lengths(ds, where)
                data = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) is not None else ds[()]
            except Exception as exc:
                problems.append(f"{where}: data unreadable ({first_line(exc)}) — checksum (fletcher32) mismatch or corruption")
                continue
            if ds.ndim == 0 and h5py.check_string_dtype(ds.dtype) is not None:
                data = np.array([data], dtype=object)
            if isinstance(want, str) and canonical_bytes_sha256(data) != want:
                problems.append(f"{where}: sha256 mismatch (content changed since it was written)")
            if len(problems) >= MAX_PROBLEMS:
                break
    return fmt, problems


def check_artifact(p: str, quick: bool) -> list[str]:
    """Cross-element rules the schema cannot express, checked through the real reader by every element."""
    problems: list[str] = []
    try:
        art = open_artifact(p)
    except ScopeError as exc:
        return [str(exc)]
    with art:
        used = set()
        if art.dataset_fingerprint is not None:
            problems.extend(image_table.check_table(art))
            used.add(image_table.FEATURE)
        for name in art.layers:
            slot = art.slot(name)
            for el in registry.layer_elements():
                try:
                    sec = art.section(name, el.name)
                    if sec is None:
                        continue
                    found, feats = el.check(sec, slot, art, quick)
                except ScopeError as exc:
                    problems.append(str(exc))
                    continue
                problems.extend(found)
                used |= feats
                if len(problems) >= MAX_PROBLEMS:
                    return problems[:MAX_PROBLEMS]
        missing = sorted(x for x in used if x not in art.required_features and x != "?")
        if missing:
            problems.append(f"required_features lacks {', '.join(missing)} which the file uses")
    return problems
