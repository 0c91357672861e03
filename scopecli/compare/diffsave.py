"""The `scope diff --save` file: a small versioned HDF5 (format `scope.diff`) the gallery can link from.

Why a file: a diff of two large artifacts is worth keeping and sharing like the artifacts
themselves, so it follows their conventions — format name and MAJOR.MINOR version at the root,
`encoding-type`/`encoding-version` on every element, sha256 per dataset, atomic write.

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
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from scopecli import __version__
from scopecli.artifact.h5io import set_encoding, write_array, write_string, write_strings
from scopecli.errors import ScopeError

FORMAT_NAME = "scope.diff"
FORMAT_VERSION = "1.0"
ENCODING_VERSION = "1.0"


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
    """Write atomically: a temp file next to `path`, fsync, then os.replace (old file or new, never half)."""
    from scopecli.compare.drawing import check_output

    check_output(path, "diff.h5")
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:
            _write(f, res)
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_diff(path: str | Path) -> dict:
    """Read a diff file back into plain Python (for the gallery and tests); refuses other formats."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ScopeError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None
    with f:
        if f.attrs.get("format") != FORMAT_NAME:
            raise ScopeError(f"{path}: not a scope diff file")
        major = str(f.attrs.get("format_version", "0")).split(".")[0]
        if major != FORMAT_VERSION.split(".")[0]:
            raise ScopeError(f"{path}: diff format {f.attrs.get('format_version')} is not readable by this scope "
                             f"(reads {FORMAT_VERSION.split('.')[0]}.x); upgrade scope")
        try:
            return _read(f)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScopeError(f"{path}: damaged scope diff file ({type(exc).__name__}: {str(exc)[:100]})") from None


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _read(f: h5py.File) -> dict:
    c = f["cka"]
    out = {
        "seed": int(f.attrs["seed"]),
        "permutations": int(f.attrs.get("permutations", 0)),
        "shared_images": int(f.attrs["shared_images"]),
        "cka_images": int(f.attrs.get("cka_images", f.attrs["shared_images"])),
        "same_architecture": bool(f.attrs.get("same_architecture", False)),
        "path_a": _text(f["a"].attrs.get("path", "")),
        "path_b": _text(f["b"].attrs.get("path", "")),
        "layers_a": [_text(s) for s in c["layers_a"][()]],
        "layers_b": [_text(s) for s in c["layers_b"][()]],
        "model_a": json.loads(f["a/model"][()]),
        "model_b": json.loads(f["b/model"][()]),
    }
    for key in ("units_a", "units_b", "linear", "debiased", "linear_floor", "debiased_floor", "best_b"):
        out[key] = c[key][()]
    out["matching"] = [
        {"layer_a": _text(g.attrs["layer_a"]), "layer_b": _text(g.attrs["layer_b"]),
         "floor": float(g.attrs.get("floor", np.nan)), **{k: g[k][()] for k in g.keys()}}
        for _, g in sorted(f["matching"].items(), key=lambda kv: int(kv[0]))
    ]
    out["changes"] = [
        {"layer": _text(g.attrs["layer"]), "k": int(g.attrs.get("k", 0)), **{k: g[k][()] for k in g.keys()}}
        for _, g in sorted(f["changes"].items(), key=lambda kv: int(kv[0]))
    ]
    return out
