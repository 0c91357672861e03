"""The `scope diff --save` file: a small versioned HDF5 (format `scope.diff`) the gallery can link from.

Why a file: a diff of two large artifacts is worth keeping and sharing like the artifacts themselves,
so it follows their conventions and goes through the same machinery: format name and MAJOR.MINOR
version at the root, `encoding-type`/`encoding-version` on every element, sha256 per dataset, atomic
write with the usual permissions, bounded reads, `schema/diff-1.0.json` for `scope validate`, and a
summary for `scope info`.

Layout 1.0:
  /                attrs format="scope.diff", format_version, writer_version, created_utc,
                   seed, permutations, shared_images, cka_images, nonfinite_images_left_out,
                   same_architecture
  /a, /b           attrs path; dataset `model` (JSON string of the artifact's model dict)
  /cka             layers_a, layers_b (strings), units_a, units_b, linear, debiased,
                   linear_floor, debiased_floor (float64 [La, Lb]), best_b (int64 [La], -1 none)
  /matching/<i>    attrs layer_a, layer_b, floor; best_b, best_b_corr, buddies [m, 2],
                   assign_a, assign_b, assign_corr, unmatched_a
  /changes/<i>     attrs layer, k; self_corr, jaccard (if examples), delta_<stat> (if stats)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import h5py
import numpy as np

from scopecli.artifact.h5io import (attr_float, attr_int, H5_ERRORS, attr_int, attr_str, attr_text, first_line,
    get_dataset, get_group, raised_by_h5py, read_attr, read_numeric, read_string, read_strings, set_encoding,
    short_repr, write_array, write_string, write_strings)
from scopecli.artifact.reader import check_scope_file
from scopecli.artifact.report import human_bytes
from scopecli.core.errors import ScopeError
from scopecli.core.version import __version__
from scopecli.core.fileio import AtomicFile, check_output_file

FORMAT_NAME = "scope.diff"
FORMAT_VERSION = "1.0"
FORMAT_MAJOR, FORMAT_MINOR = 1, 0
ENCODING_VERSION = "1.0"
MATRICES = ("linear", "debiased", "linear_floor", "debiased_floor")


def _group(parent: h5py.Group, name: str, enc: str) -> h5py.Group:
    g = parent.create_group(name)
    set_encoding(g, enc, ENCODING_VERSION)
    return g


def _write(f: h5py.File, res) -> None:
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    set_encoding(f, FORMAT_NAME, ENCODING_VERSION)
    f.attrs["writer_version"] = f"scope {__version__}"
    f.attrs["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    f.attrs["seed"] = int(res.seed)
    f.attrs["permutations"] = int(res.permutations)
    f.attrs["shared_images"] = int(res.n_shared)
    f.attrs["cka_images"] = int(res.n_cka)
    f.attrs["nonfinite_images_left_out"] = int(res.n_nonfinite)
    f.attrs["same_architecture"] = bool(res.same_architecture)
    for key, path, model in (("a", res.path_a, res.model_a), ("b", res.path_b, res.model_b)):
        g = _group(f, key, "scope.diff-side")
        g.attrs["path"] = str(path)
        write_string(g, "model", json.dumps(model, sort_keys=True, default=str))
    c = _group(f, "cka", "scope.cka-table")
    write_strings(c, "layers_a", res.layers_a)
    write_strings(c, "layers_b", res.layers_b)
    write_array(c, "units_a", res.units_a, np.int64)
    write_array(c, "units_b", res.units_b, np.int64)
    write_array(c, "linear", res.cka_linear, np.float64)
    write_array(c, "debiased", res.cka_debiased, np.float64)
    write_array(c, "linear_floor", res.floor_linear, np.float64)
    write_array(c, "debiased_floor", res.floor_debiased, np.float64)
    write_array(c, "best_b", res.best_b(), np.int64)
    mg = _group(f, "matching", "scope.dict")
    for i, p in enumerate(res.pairs):
        m = p.matching
        g = _group(mg, str(i), "scope.unit-matching")
        g.attrs["layer_a"] = p.layer_a
        g.attrs["layer_b"] = p.layer_b
        g.attrs["floor"] = float(m.floor)
        write_array(g, "best_b", m.best_b, np.int64)
        write_array(g, "best_b_corr", m.best_b_corr, np.float64)
        write_array(g, "buddies", m.buddies.reshape(-1, 2), np.int64)
        write_array(g, "assign_a", m.assign_a, np.int64)
        write_array(g, "assign_b", m.assign_b, np.int64)
        write_array(g, "assign_corr", m.assign_corr, np.float64)
        write_array(g, "unmatched_a", m.unmatched_a, np.int64)
    cg = _group(f, "changes", "scope.dict")
    for i, ch in enumerate(res.changes):
        g = _group(cg, str(i), "scope.unit-changes")
        g.attrs["layer"] = ch.layer
        g.attrs["k"] = int(ch.k)
        write_array(g, "self_corr", ch.self_corr, np.float64)
        if ch.jaccard is not None:
            write_array(g, "jaccard", ch.jaccard, np.float64)
        for stat, values in ch.delta.items():
            write_array(g, f"delta_{stat}", values, np.float64)


def save_diff(res, path: str | Path) -> None:
    """Write a `compare.diff.DiffResult` atomically (old file or new, never half; the usual permissions)."""
    check_output_file(path, "diff.h5")
    with AtomicFile(path) as out:
        with h5py.File(out.tmp, "w", libver=("v110", "v110")) as f:
            _write(f, res)


def _open(path) -> h5py.File:
    p = check_scope_file(path, "diff file")
    try:
        f = h5py.File(p, "r")
    except (OSError, ValueError) as exc:
        raise ScopeError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None
    try:
        if attr_text(f, "format", str(path)) != FORMAT_NAME:
            raise ScopeError(f"{path}: not a scope diff file")
        version = attr_text(f, "format_version", str(path)) or ""
        major = version.split(".")[0]
        if major != str(FORMAT_MAJOR):
            raise ScopeError(f"{path}: diff format {short_repr(version)} is not readable by this scope "
                             f"(reads {FORMAT_MAJOR}.x); upgrade scope")
    except BaseException:
        f.close()
        raise
    return f


def read_diff(path: str | Path) -> dict:
    """Read a diff file back into plain Python (for the gallery, `info` and tests); refuses other formats."""
    f = _open(path)
    with f:
        try:
            return _read(f, str(path))
        except ScopeError:
            raise
        except H5_ERRORS as exc:
            if not raised_by_h5py(exc) and not isinstance(exc, (KeyError, TypeError, ValueError)):
                raise
            raise ScopeError(f"{path}: damaged scope diff file ({type(exc).__name__}: {first_line(exc)[:100]})") from None


def _json(ds, where: str) -> dict:
    try:
        out = json.loads(read_string(ds, where))
    except (ValueError, RecursionError) as exc:
        raise ScopeError(f"{where}: invalid JSON ({first_line(exc)})")
    if not isinstance(out, dict):
        raise ScopeError(f"{where}: not a JSON object")
    return out


def _numeric(g, name: str, where: str, ndim: int) -> np.ndarray:
    ds = get_dataset(g, name, where)
    return read_numeric(ds, f"{where}/{name}", ds.dtype.kind if ds.dtype.kind in "iuf" else "f", ndim)


def _read(f: h5py.File, path: str) -> dict:
    c = get_group(f, "cka", path)
    sides = {k: get_group(f, k, path) for k in ("a", "b")}
    out = {
        "seed": attr_int(f, "seed", path),
        "permutations": attr_int(f, "permutations", path, 0, default=0),
        "shared_images": attr_int(f, "shared_images", path),
        "cka_images": attr_int(f, "cka_images", path, 0) if "cka_images" in f.attrs else attr_int(f, "shared_images", path),
        "same_architecture": bool(read_attr(f, "same_architecture", path, False)),
        "path_a": attr_text(sides["a"], "path", "/a", "") or "",
        "path_b": attr_text(sides["b"], "path", "/b", "") or "",
        "layers_a": read_strings(get_dataset(c, "layers_a", "/cka"), "/cka/layers_a"),
        "layers_b": read_strings(get_dataset(c, "layers_b", "/cka"), "/cka/layers_b"),
        "model_a": _json(get_dataset(sides["a"], "model", "/a"), "/a/model"),
        "model_b": _json(get_dataset(sides["b"], "model", "/b"), "/b/model"),
    }
    for key in ("units_a", "units_b", "best_b"):
        out[key] = _numeric(c, key, "/cka", 1)
    for key in MATRICES:
        out[key] = _numeric(c, key, "/cka", 2)
    out["matching"] = [
        {"layer_a": attr_str(g, "layer_a", w), "layer_b": attr_str(g, "layer_b", w),
         "floor": attr_float(g, "floor", w, float("nan")), **{k: _numeric(g, k, w, get_dataset(g, k, w).ndim) for k in g.keys()}}
        for w, g in _numbered(f, "matching", path)
    ]
    out["changes"] = [
        {"layer": attr_str(g, "layer", w), "k": attr_int(g, "k", w, 0, default=0),
         **{k: _numeric(g, k, w, get_dataset(g, k, w).ndim) for k in g.keys()}}
        for w, g in _numbered(f, "changes", path)
    ]
    return out


def _numbered(f: h5py.File, name: str, path: str) -> list[tuple[str, h5py.Group]]:
    parent = get_group(f, name, path)
    keys = list(parent.keys())
    if any(not k.isdigit() for k in keys):
        raise ScopeError(f"/{name}: children must be numbered 0, 1, ...")
    return [(f"/{name}/{k}", get_group(parent, k, f"/{name}")) for k in sorted(keys, key=int)]


def check_diff(path: str, quick: bool) -> list[str]:
    """Rules the schema cannot express: tables agree with each other and with the layer lists."""
    try:
        d = read_diff(path)
    except ScopeError as exc:
        return [str(exc)]
    problems = []
    la, lb = len(d["layers_a"]), len(d["layers_b"])
    for key in MATRICES:
        if d[key].shape != (la, lb):
            problems.append(f"/cka/{key}: shape {d[key].shape}, expected ({la}, {lb})")
    if len(d["best_b"]) and ((d["best_b"] < -1) | (d["best_b"] >= lb)).any():
        problems.append("/cka/best_b: layer index out of range")
    for i, m in enumerate(d["matching"]):
        for side, layers in (("layer_a", d["layers_a"]), ("layer_b", d["layers_b"])):
            if m[side] not in layers:
                problems.append(f"/matching/{i}: {side} {short_repr(m[side])} is not among the compared layers")
    for i, ch in enumerate(d["changes"]):
        if ch["layer"] not in d["layers_a"]:
            problems.append(f"/changes/{i}: layer {short_repr(ch['layer'])} is not among the compared layers")
    return problems


def diff_info(path: str) -> dict:
    """JSON-able summary of a diff file for `scope info --json`."""
    d = read_diff(path)
    f = _open(path)
    with f:
        version = attr_text(f, "format_version", path)
        writer = attr_text(f, "writer_version", path)
        created = attr_text(f, "created_utc", path)
    best = d["best_b"]
    return {
        "path": path, "format": FORMAT_NAME, "format_version": version, "writer": writer, "created": created,
        "size_bytes": os.path.getsize(path),
        "a": {"path": d["path_a"], "model": d["model_a"]}, "b": {"path": d["path_b"], "model": d["model_b"]},
        "seed": d["seed"], "permutations": d["permutations"], "shared_images": d["shared_images"],
        "cka_images": d["cka_images"], "same_architecture": d["same_architecture"],
        "layers": [
            {"layer_a": la, "best_b": d["layers_b"][int(best[i])] if i < len(best) and best[i] >= 0 else None,
             "debiased_cka": float(d["debiased"][i, best[i]]) if i < len(best) and best[i] >= 0 else None,
             "floor": float(d["debiased_floor"][i, best[i]]) if i < len(best) and best[i] >= 0 else None}
            for i, la in enumerate(d["layers_a"])
        ],
        "matched_pairs": [{"layer_a": m["layer_a"], "layer_b": m["layer_b"], "floor": m["floor"],
                           "mutual_best": int(len(m.get("buddies", ())))} for m in d["matching"]],
        "changes": [ch["layer"] for ch in d["changes"]],
    }


def diff_report(info: dict):
    """Rich view of `diff_info` for `scope info`."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def name(side):
        m = side["model"]
        return f"{m.get('name') or m.get('spec') or '?'} ({side['path']})"

    lines = [
        Text.assemble(("file  ", "bold"), f"{info['path']}  ({human_bytes(info['size_bytes'])}, scope diff format "
                      f"{info['format_version']}, written by {info['writer']}, created {info['created']})"),
        Text.assemble(("A     ", "bold"), name(info["a"])),
        Text.assemble(("B     ", "bold"), name(info["b"])),
        Text.assemble(("data  ", "bold"), f"{info['shared_images']} shared probe images, CKA on {info['cka_images']}, "
                      f"{info['permutations']} permutations (seed {info['seed']})"),
    ]
    t = Table(title="best B layer per A layer (debiased CKA, permutation floor)")
    for col in ("A layer", "best B layer", "CKA", "floor"):
        t.add_column(col, justify="left" if "layer" in col else "right", overflow="fold")
    for row in info["layers"]:
        t.add_row(row["layer_a"], row["best_b"] or "-", "-" if row["debiased_cka"] is None else f"{row['debiased_cka']:.3f}",
                  "-" if row["floor"] is None else f"{row['floor']:.3f}")
    return Group(*lines, t)
