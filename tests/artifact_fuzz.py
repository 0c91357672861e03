"""Seeded mutation fuzzing of scope artifacts: break valid files, run every read command, judge the exits.

Used by `tests/test_fuzz_artifacts.py` (a few hundred cases) and `scripts/fuzz_artifacts.py N` (thousands).

A case = (base artifact, mutation drawn from the case seed). The mutated file is fed to `info`, `validate`,
`show`, `query`, `diff` and `export` through the real entry point `scopecli.cli.main`, in a worker process
that runs many cases in a row (fast), watched by its parent (a per-command timeout and a memory limit kill
the worker; a fresh one goes on with the next case). Every command must end with exit 0, or exit 1/2 and
exactly one `error:` line on stderr that is not scope's "internal error" line, and no command may grow the
worker's RSS by more than 1 GiB over its baseline (after imports, before its first case; see `fuzz`).

Mutation kinds: byte-level damage anywhere (bitflip, truncate, fill), h5py-level damage to datasets and
groups, and attribute damage (ATTR_MUTATIONS): attribute messages of object headers hit byte by byte with the
header checksum recomputed (vlen string lengths and heap references, dataspaces, datatypes), the heap strings
behind string attributes, and attributes rewritten through h5py (wrong types, huge values, deleted/copied).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import h5py
import numpy as np

import h5raw
import memwatch
from artifact_factory import (
    fake_examples,
    fake_image,
    fake_image_table,
    fake_layers,
    fake_model_info,
    fake_probe,
    fake_renders,
    fake_stats,
)

CONV, FC = "features.1/conv", "head.fc"
N_PROBE = 100  # diff/query --like need >= 100 shared probe images to do real work


# ------------------------------------------------------------------------------------------------- bases


def build_bases(folder: str) -> dict[str, str]:
    """Small valid artifacts that cover every section: full (JPEG patches), renders only, PNG patches."""
    from scopecli.artifact import ArtifactWriter

    out = {}
    for name, renders, collect, fmt in (("full", True, True, "jpeg"), ("renders", True, False, "jpeg"),
                                        ("png", False, True, "png")):
        path = os.path.join(folder, f"base-{name}.h5")
        table = fake_image_table(N_PROBE, seed=1)
        with ArtifactWriter(path, fake_model_info(), "fuzzbase", {"seed": 1}) as w:
            for li, rec in enumerate(fake_layers()):
                w.ensure_layer(rec)
                us = list(range(rec.units))
                if renders:
                    w.put_renders(rec.name, fake_renders(rec, us[:3], li, size=12, objectives=("channel", "negative")))
                if collect:
                    w.set_dataset(table)
                    w.put_examples(rec.name, "top", fake_examples(rec, us[:4], N_PROBE, 3, li, True, patch=8), fmt)
                    w.put_examples(rec.name, "bottom", fake_examples(rec, us[1:3], N_PROBE, 2, li + 9, False, patch=8), fmt)
                    w.put_stats(rec.name, fake_stats(rec, us[:5], li))
                    w.put_probe(rec.name, fake_probe(rec, range(N_PROBE), li))
            w.add_timing("total", 0.1)
        out[name] = path
    return out


def catalogue(path: str) -> dict:
    """Objects of a file and the byte ranges of raw data (so mutations can aim at metadata)."""
    objs, data_ranges = [], []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            objs.append(("dataset", "/" + name, obj.dtype.kind, obj.shape))
            try:
                if obj.chunks:
                    for i in range(obj.id.get_num_chunks()):
                        info = obj.id.get_chunk_info(i)
                        data_ranges.append((info.byte_offset, info.byte_offset + info.size))
                elif obj.id.get_offset() is not None:
                    data_ranges.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
            except Exception:
                pass
        else:
            objs.append(("group", "/" + name, None, None))

    owners = {}
    with h5py.File(path, "r") as f:
        f.visititems(visit)
        for _, name, _, _ in objs + [("group", "/", None, None)]:
            owners[h5py.h5o.get_info(f[name].id).addr] = name
    size = os.path.getsize(path)
    mask = np.zeros(size, bool)
    for a, b in data_ranges:
        mask[a:b] = True
    meta = np.flatnonzero(~mask)
    with open(path, "rb") as fh:
        raw = fh.read()
    attrs = [a for a in h5raw.attribute_messages(raw) if a.owner in owners]
    gcols = []
    p = raw.find(h5raw.GCOL_HEADER)
    while p >= 0:
        gcols.append(p)
        p = raw.find(h5raw.GCOL_HEADER, p + 1)
    return {"objects": objs, "size": size, "meta_positions": meta, "attrs": attrs, "owners": owners,
            "ohdrs": sorted(owners), "gcols": gcols}


# ------------------------------------------------------------------------------------------------- mutations


def _sha(arr) -> str:
    from scopecli.artifact.layout import canonical_bytes_sha256

    return canonical_bytes_sha256(arr)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _datasets(cat, kinds=None):
    return [o for o in cat["objects"] if o[0] == "dataset" and (kinds is None or o[2] in kinds)]


def _replace_dataset(f, path, data=None, keep_attrs=True, fix_sha=True, **kw):
    old = f[path]
    attrs = {k: v for k, v in old.attrs.items()} if keep_attrs else {}
    parent, name = path.rsplit("/", 1)
    parent = parent or "/"
    del f[path]
    ds = f[parent].create_dataset(name, data=data, **kw)
    for k, v in attrs.items():
        ds.attrs[k] = v
    if fix_sha and data is not None:
        ds.attrs["sha256"] = _sha(np.asarray(data))
    return ds


def m_bitflip(raw: bytearray, rng, cat) -> str:
    n = int(rng.integers(1, 9))
    where = "meta" if rng.random() < 0.6 and len(cat["meta_positions"]) else "any"
    pos = []
    for _ in range(n):
        p = int(_pick(rng, cat["meta_positions"])) if where == "meta" else int(rng.integers(len(raw)))
        raw[p] ^= 1 << int(rng.integers(8))
        pos.append(p)
    return f"bitflip {where} x{n} at {pos[:3]}"


def m_truncate(raw: bytearray, rng, cat) -> str:
    cut = int(rng.integers(0, len(raw))) if rng.random() < 0.5 else len(raw) - int(rng.integers(1, 4096))
    cut = max(0, cut)
    del raw[cut:]
    return f"truncate to {cut}"


def m_zero_range(raw: bytearray, rng, cat) -> str:
    start = int(_pick(rng, cat["meta_positions"]))
    n = int(rng.integers(1, 256))
    fill = int(rng.choice([0, 0xFF, int(rng.integers(256))]))
    raw[start : start + n] = bytes([fill]) * len(raw[start : start + n])
    return f"fill {n} bytes at {start} with {fill:#x}"


def m_delete(f, rng, cat) -> str:
    kind, path, _, _ = _pick(rng, cat["objects"])
    del f[path]
    return f"delete {kind} {path}"


def m_duplicate(f, rng, cat) -> str:
    _, src, _, _ = _pick(rng, _datasets(cat))
    if rng.random() < 0.5:  # an extra copy beside it
        parent = src.rsplit("/", 1)[0] or "/"
        f.copy(f[src], f[parent], name=src.rsplit("/", 1)[1] + "_dup")
        return f"duplicate {src} beside itself"
    _, dst, _, _ = _pick(rng, _datasets(cat))  # another dataset's content in its place
    if dst == src:
        return "duplicate: no-op"
    parent, name = dst.rsplit("/", 1)
    del f[dst]
    f.copy(f[src], f[parent or "/"], name=name)
    return f"replace {dst} by a copy of {src}"


_ODD_ATTRS = [
    None, "", "x" * 5000, "2.0", "0.1", "1.x", "9", -1, 0, 1, 1 << 40, -(1 << 62), 2.5, math.nan,
    np.array([1, 2, 3]), np.array([-1, -1, -1]), np.array([1 << 30, 8, 8]), np.array(["a", "b"], dtype=h5py.string_dtype()),
    b"\xff\xfe", "[bold red]markup[/]", "line1\nline2", np.array([], dtype=np.int64),
]


def m_attr(f, rng, cat) -> str:
    _, path, _, _ = _pick(rng, cat["objects"] + [("group", "/", None, None)] * 3)
    obj = f[path]
    keys = list(obj.attrs.keys())
    if not keys:
        return f"attr: {path} has none"
    key = _pick(rng, keys)
    val = _ODD_ATTRS[int(rng.integers(len(_ODD_ATTRS)))]
    if val is None:
        del obj.attrs[key]
        return f"delete attr {path}@{key}"
    obj.attrs[key] = val
    return f"set attr {path}@{key} = {str(val)[:40]!r}"


def m_huge_shape(f, rng, cat) -> str:
    _, path, kind, shape = _pick(rng, _datasets(cat, "iuf"))
    old = f[path]
    dims = len(shape) or 1
    big = int(rng.choice([1 << 20, 1 << 28, 1 << 31, 1 << 40, (1 << 62)]))
    new_shape = (big,) + tuple(shape[1:]) if shape else (big,)
    if dims > 1 and rng.random() < 0.3:
        new_shape = tuple(shape[:-1]) + (big,)
    try:
        chunks = tuple(max(1, min(64, d)) for d in new_shape)
        _replace_dataset(f, path, None, shape=new_shape, dtype=old.dtype, chunks=chunks, fix_sha=False,
                         maxshape=tuple(None for _ in new_shape))
    except (ValueError, OSError) as exc:
        return f"huge shape {new_shape} for {path} not storable ({type(exc).__name__})"
    return f"huge declared shape {new_shape} for {path}"


_INDEX_COLS = ("offset", "length", "image_index", "unit", "units", "trace_offset", "trace_length", "height", "width",
               "loc", "box", "count", "diversity_index", "size", "steps", "seed", "present")


def m_indices(f, rng, cat) -> str:
    cands = [o for o in _datasets(cat, "iu") if o[1].rsplit("/", 1)[1] in _INDEX_COLS and o[3] and 0 not in o[3]]
    if not cands:
        return "indices: none"
    _, path, _, shape = _pick(rng, cands)
    arr = f[path][()]
    flat = arr.reshape(-1)
    bad = [-1, -2, 0, 1, 2, 7, 1 << 16, 1 << 31, (1 << 31) - 1, 1 << 40, (1 << 62), -(1 << 62), 255, 8193, 100, 99]
    n = int(rng.integers(1, 4))
    for _ in range(n):
        v = _pick(rng, bad)
        try:
            flat[int(rng.integers(len(flat)))] = np.asarray(v).astype(arr.dtype)
        except (OverflowError, ValueError):
            flat[int(rng.integers(len(flat)))] = np.iinfo(arr.dtype).max
    if rng.random() < 0.2 and len(flat) > 1:  # unsorted / duplicated rows
        flat[:] = flat[::-1]
    fix = rng.random() < 0.7
    _replace_dataset(f, path, arr, fix_sha=fix, chunks=f[path].chunks, fletcher32=bool(f[path].fletcher32))
    return f"out-of-range values x{n} in {path} (sha {'fixed' if fix else 'stale'})"


def m_floats(f, rng, cat) -> str:
    cands = [o for o in _datasets(cat, "f") if o[3] and 0 not in o[3]]
    _, path, _, shape = _pick(rng, cands)
    arr = f[path][()]
    flat = arr.reshape(-1)
    with np.errstate(all="ignore"):
        for _ in range(int(rng.integers(1, 5))):
            flat[int(rng.integers(len(flat)))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, 6e4])
        if rng.random() < 0.3:
            flat[:] = _pick(rng, [np.nan, np.inf, 0.0])
    _replace_dataset(f, path, arr.astype(arr.dtype), chunks=f[path].chunks)
    return f"odd floats in {path}"


_ODD_STRINGS = ["", "{", "[]", "null", "{\"spec\": 1}", "x" * 100_000, "[bold]x[/bold] \x1b[31m", "a\nb\r\nc",
                "../../etc/passwd", "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "🙂" * 50,
                "{\"command\": \"render\", \"params\": {\"a\": [[[[[[[[[[]]]]]]]]]]}}", "1" * 400 + "e99999"]


def m_strings(f, rng, cat) -> str:
    cands = _datasets(cat, "OS")
    _, path, _, shape = _pick(rng, cands)
    s = _pick(rng, _ODD_STRINGS)
    STR = h5py.string_dtype("utf-8")
    if shape == ():
        _replace_dataset(f, path, s, dtype=STR)
    else:
        vals = list(f[path].asstr()[()]) if shape[0] else []
        if vals and rng.random() < 0.7:
            vals[int(rng.integers(len(vals)))] = s
        elif rng.random() < 0.5:
            vals = vals + [s]
        else:
            vals = vals[:-1]
        arr = np.array(vals, dtype=object)
        old_attrs = dict(f[path].attrs)
        parent, name = path.rsplit("/", 1)
        del f[path]
        ds = f[parent or "/"].create_dataset(name, shape=(len(vals),), dtype=STR)
        if vals:
            ds[...] = arr
        for k, v in old_attrs.items():
            ds.attrs[k] = v
        ds.attrs["sha256"] = _sha(arr)
    return f"odd string {s[:20]!r} in {path}"


def m_retype(f, rng, cat) -> str:
    kind, path, dkind, shape = _pick(rng, cat["objects"])
    if path == "/":
        return "retype: root"
    parent, name = path.rsplit("/", 1)
    parent = parent or "/"
    choice = int(rng.integers(6))
    attrs = dict(f[path].attrs)
    del f[path]
    if choice == 0:
        new = f[parent].create_group(name)
        what = "group"
    elif choice == 1:
        new = f[parent].create_dataset(name, data=np.arange(3, dtype=np.float32))
        what = "float32[3]"
    elif choice == 2:
        new = f[parent].create_dataset(name, data="text", dtype=h5py.string_dtype())
        what = "scalar string"
    elif choice == 3:
        new = f[parent].create_dataset(name, data=np.zeros((2, 2, 2), np.int8))
        what = "int8[2,2,2]"
    elif choice == 4:
        f[parent][name] = h5py.SoftLink("/model")
        return f"{path} -> soft link"
    else:
        f[parent][name] = h5py.ExternalLink("/etc/passwd", "/x")
        return f"{path} -> external link"
    for k, v in attrs.items():
        new.attrs[k] = v
    return f"{path} ({kind}) -> {what}"


def m_blob(f, rng, cat) -> str:
    cands = [o for o in _datasets(cat, "u") if o[1].endswith("/blob") and o[3] and o[3][0] > 64]
    _, path, _, shape = _pick(rng, cands)
    arr = f[path][()]
    choice = int(rng.integers(3))
    if choice == 0:  # garbage at a random place (maybe an image header)
        at = int(rng.integers(len(arr) - 16))
        arr[at : at + 16] = rng.integers(0, 256, 16, dtype=np.uint8)
        what = f"garbage at {at}"
    elif choice == 1:  # a valid but differently sized PNG over the first image
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(fake_image(rng, 5, 7)).save(buf, format="PNG")
        b = np.frombuffer(buf.getvalue(), np.uint8)
        n = min(len(b), len(arr))
        arr[:n] = b[:n]
        what = "another PNG over the first image"
    else:  # a grayscale / palette PNG
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(buf, format="PNG")
        b = np.frombuffer(buf.getvalue(), np.uint8)
        n = min(len(b), len(arr))
        arr[:n] = b[:n]
        what = "grayscale PNG over the first image"
    _replace_dataset(f, path, arr, fix_sha=rng.random() < 0.5, chunks=f[path].chunks, fletcher32=True)
    return f"blob {path}: {what}"


# ------------------------------------------------------------------------------------------- attribute damage
#
# Byte-level kinds aim at the attribute messages of object headers (found by h5raw, see its docstring) and
# at the global heap objects holding the characters of variable-length string attributes. They recompute the
# header chunk's checksum (mostly), so libhdf5 decodes the damage instead of refusing the chunk. h5py-level
# kinds rewrite attributes of the elements scope reads (root, /layers and its layers, example sets, the
# stats sketch group, /model, /dataset) with wrong types, huge values, or delete / duplicate / swap them.


def _attr_msg(rng, cat, pred=None):
    """An attribute message: a name first (so `order` is hit as often as `encoding-type`, which every element
    has), then one of its occurrences."""
    cands = [a for a in cat["attrs"] if pred is None or pred(a)]
    name = _pick(rng, sorted({a.name for a in cands}))
    return _pick(rng, [a for a in cands if a.name == name])


def _at(cat, a) -> str:
    return f"{cat['owners'].get(a.owner, hex(a.owner))}@{a.name}"


def _seal(raw: bytearray, rng, a) -> str:
    """Recompute the header chunk's checksum (9 times in 10): damage that reaches the attribute decoder."""
    if rng.random() < 0.9:
        h5raw.fix_checksum(raw, a.chunk)
        return "checksum fixed"
    return "checksum stale"


def _other(rng, options, current):
    """One of `options` other than `current` (a mutation that changes nothing tests nothing)."""
    return _pick(rng, [o for o in options if o != current])


_HUGE_U32 = [0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 1 << 28, 1 << 30, 0xFFFFFFF0, 3 << 30]
_HUGE_U64 = [1 << 20, 1 << 28, 1 << 31, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1]


def m_attr_vlen_len(raw: bytearray, rng, cat) -> str:
    """The uint32 length of a variable-length string attribute's descriptor: mostly huge (libhdf5 allocates it)."""
    a = _attr_msg(rng, cat, lambda a: a.descriptors())
    descs = a.descriptors()
    targets = descs if len(descs) > 1 and rng.random() < 0.3 else [_pick(rng, descs)]
    old = int.from_bytes(raw[targets[0] : targets[0] + 4], "little")
    r = rng.random()
    if r < 0.6:
        val = _pick(rng, _HUGE_U32)
    elif r < 0.8:
        val = int(rng.integers(1 << 27, 1 << 32))
    else:
        val = _other(rng, [0, old + 1, max(0, old - 1), old + 4096, old * 2 + 16], old)
    for d in targets:
        raw[d : d + 4] = val.to_bytes(4, "little")
    which = "all elements" if len(targets) > 1 else f"element {descs.index(targets[0])}"
    return f"vlen length {old} -> {val:#x} of {_at(cat, a)} ({which}, {_seal(raw, rng, a)})"


def m_attr_vlen_ref(raw: bytearray, rng, cat) -> str:
    """The global heap reference (collection address, object index) of a variable-length string attribute."""
    a = _attr_msg(rng, cat, lambda a: a.descriptors())
    d = _pick(rng, a.descriptors())
    length, addr, idx = int.from_bytes(raw[d : d + 4], "little"), int.from_bytes(raw[d + 4 : d + 12], "little"), \
        int.from_bytes(raw[d + 12 : d + 16], "little")
    choice = int(rng.integers(4))
    if choice == 0:
        new = _other(rng, [0, 8, len(raw) - 8, len(raw) + 4096, 1 << 40, (1 << 64) - 1, addr + 16, max(0, addr - 16),
                           int(_pick(rng, cat["gcols"])), int(_pick(rng, cat["ohdrs"])), int(_pick(rng, cat["meta_positions"]))],
                     addr)
        raw[d + 4 : d + 12] = new.to_bytes(8, "little")
        what = f"heap address {addr} -> {new:#x}"
    elif choice == 1:
        new = _other(rng, [0, 0xFFFF, 0x10000, 0xFFFFFFFF, idx + 1, idx + 1000, max(0, idx - 1)], idx)
        raw[d + 12 : d + 16] = new.to_bytes(4, "little")
        what = f"heap index {idx} -> {new}"
    elif choice == 2:  # another string of the file, its length kept or not
        o = _attr_msg(rng, cat, lambda o: o.descriptors() and o is not a)
        od = _pick(rng, o.descriptors())
        keep = rng.random() < 0.5
        raw[d + (4 if keep else 0) : d + 16] = raw[od + (4 if keep else 0) : od + 16]
        what = f"heap reference of {_at(cat, o)} ({'own length kept' if keep else 'with its length'})"
    else:
        raw[d + 4 : d + 16] = rng.integers(0, 256, 12, dtype=np.uint8).tobytes()
        what = "random heap reference"
    return f"{what} in {_at(cat, a)} (length {length}, {_seal(raw, rng, a)})"


def m_attr_space(raw: bytearray, rng, cat) -> str:
    """The dataspace of an attribute: rank, type, flags, version, dims (huge)."""
    a = _attr_msg(rng, cat)
    sp = a.space
    choice = int(rng.integers(5)) if a.rank else int(rng.integers(4))
    if choice == 0:
        rank = _other(rng, [1, 2, 3, 8, 32, 33, 255], a.rank)
        raw[sp + 1] = rank
        if raw[sp + 3] == 0 and rng.random() < 0.7:
            raw[sp + 3] = 1  # scalar -> simple: the dims are read from whatever follows
        what = f"rank {a.rank} -> {rank}"
    elif choice == 1:
        t = _other(rng, [0, 1, 2, 3, 255], raw[sp + 3])
        raw[sp + 3] = t
        what = f"dataspace type -> {t}"
    elif choice == 2:
        v = _other(rng, [0, 1, 2, 3, 255], raw[sp])
        raw[sp] = v
        what = f"dataspace version -> {v}"
    elif choice == 3:
        raw[sp + 2] ^= 1
        what = "max-dims flag flipped"
    else:
        i = int(rng.integers(a.rank))
        d = _other(rng, _HUGE_U64 + [0, a.dims[i] + 1, a.dims[i] * 1000 + 1], a.dims[i])
        raw[sp + 4 + 8 * i : sp + 12 + 8 * i] = d.to_bytes(8, "little")
        what = f"dim {i} {a.dims[i]} -> {d:#x}"
    return f"{what} of {_at(cat, a)} ({_seal(raw, rng, a)})"


def m_attr_dtype(raw: bytearray, rng, cat) -> str:
    """The datatype of an attribute: size, class, version, class bits, base type / number layout."""
    a = _attr_msg(rng, cat)
    dt = a.dtype
    choice = int(rng.integers(5))
    if choice == 0:
        size = _other(rng, [0, 1, 2, 4, 8, 15, 16, 17, 64, 1 << 16, 1 << 24, 1 << 31, 0xFFFFFFFF], a.elem_size)
        raw[dt + 4 : dt + 8] = size.to_bytes(4, "little")
        what = f"datatype size {a.elem_size} -> {size:#x}"
    elif choice == 1:
        cls = _pick(rng, [c for c in range(16) if c != a.dt_class])
        raw[dt] = (raw[dt] & 0xF0) | cls
        what = f"datatype class {a.dt_class} -> {cls}"
    elif choice == 2:
        v = _other(rng, [0, 1, 2, 3, 4, 5, 15], raw[dt] >> 4)
        raw[dt] = (raw[dt] & 0x0F) | (v << 4)
        what = f"datatype version -> {v}"
    elif choice == 3:  # byte order, sign, vlen string/sequence, padding, character set
        i, bit = int(rng.integers(3)), int(rng.integers(8))
        raw[dt + 1 + i] ^= 1 << bit
        what = f"datatype class bit {8 * i + bit} flipped"
    elif a.dt_class == h5raw.DT_VLEN and a.dtype_size >= 16:  # the base type (a 1-byte character)
        if rng.random() < 0.5:
            size = _other(rng, [0, 1, 2, 8, 1 << 16, 1 << 31, 0xFFFFFFFF], int.from_bytes(raw[dt + 12 : dt + 16], "little"))
            raw[dt + 12 : dt + 16] = size.to_bytes(4, "little")
            what = f"base type size -> {size:#x}"
        else:
            cls = _other(rng, [0, 1, 3, 6, 7, 9, 10, 15], raw[dt + 8] & 0x0F)
            raw[dt + 8] = (raw[dt + 8] & 0xF0) | cls
            what = f"base type class -> {cls}"
    else:  # fixed-point: bit offset / precision; float: also exponent / mantissa layout
        at = dt + 8 + 2 * int(rng.integers(max(1, min(6, (a.dtype_size - 8) // 2))))
        v = _other(rng, [0, 1, 8, 63, 64, 65, 128, 0xFFFF], int.from_bytes(raw[at : at + 2], "little"))
        raw[at : at + 2] = v.to_bytes(2, "little")
        what = f"datatype property at +{at - dt} -> {v}"
    return f"{what} of {_at(cat, a)} ({_seal(raw, rng, a)})"


def m_attr_bytes(raw: bytearray, rng, cat) -> str:
    """Bit flips / filled bytes inside one attribute message: header sizes, name, datatype, dataspace, value."""
    a = _attr_msg(rng, cat)
    regions = {"header": (a.msg, a.msg + 9), "name": (a.msg + 9, a.dtype), "datatype": (a.dtype, a.space),
               "dataspace": (a.space, a.data), "value": (a.data, a.data + a.data_size)}
    region = _pick(rng, sorted(k for k, (s, e) in regions.items() if e > s))
    s, e = regions[region]
    n = int(rng.integers(1, 5))
    if rng.random() < 0.6:
        bits = rng.choice((e - s) * 8, size=min(n, (e - s) * 8), replace=False)
        for b in bits:
            raw[s + int(b) // 8] ^= 1 << (int(b) % 8)
        what = f"{len(bits)} bit flips"
    else:
        at = int(rng.integers(s, e))
        end = min(e, at + n)
        fill = _pick(rng, [0, 0xFF, int(rng.integers(256))])
        if raw[at:end] == bytes([fill]) * (end - at):
            fill ^= 0xFF
        raw[at:end] = bytes([fill]) * (end - at)
        what = f"{end - at} byte(s) set to {fill:#x}"
    return f"{what} in the {region} of {_at(cat, a)} ({_seal(raw, rng, a)})"


_BAD_TEXT = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80\x80", b"\xf4\x90\x80\x80", b"\x00",
             b"\x1b[31m", b"\r", b"\n", b"[bold red]", b"\x07\x08"]


def m_attr_heap(raw: bytearray, rng, cat) -> str:
    """The global heap object with the characters of a string attribute: bad UTF-8, control bytes, its size,
    index or reference count (the heap has no checksum)."""
    a = _attr_msg(rng, cat, lambda a: a.descriptors())
    d = _pick(rng, a.descriptors())
    addr, idx = int.from_bytes(raw[d + 4 : d + 12], "little"), int.from_bytes(raw[d + 12 : d + 16], "little")
    found = h5raw.heap_object(raw, addr, idx)
    if found is None:
        return f"attr heap: no heap object for {_at(cat, a)}"
    q, osize = found
    choice = int(rng.integers(5)) if osize else int(rng.integers(2, 5))
    if choice <= 1:
        bad = _pick(rng, _BAD_TEXT)
        at = q + 16 + int(rng.integers(osize))
        n = min(len(bad), q + 16 + osize - at)
        raw[at : at + n] = bad[:n]
        what = f"{bad[:n]!r} at character {at - q - 16}"
    elif choice == 2:
        new = _other(rng, [0, osize + 1, max(0, osize - 1), osize + 8, osize * 2 + 64, 1 << 31, 1 << 63], osize)
        raw[q + 8 : q + 16] = new.to_bytes(8, "little")
        what = f"object size {osize} -> {new:#x}"
    elif choice == 3:
        new = _other(rng, [0, idx + 1, 0xFFFF], idx)
        raw[q : q + 2] = new.to_bytes(2, "little")
        what = f"object index {idx} -> {new}"
    else:
        new = _other(rng, [0, 1, 0xFFFF], int.from_bytes(raw[q + 2 : q + 4], "little"))
        raw[q + 2 : q + 4] = new.to_bytes(2, "little")
        what = f"reference count -> {new}"
    return f"heap string of {_at(cat, a)}: {what}"


def _attr_element(rng, cat) -> str:
    """An element whose attributes scope reads; groups that carry meaning are drawn more often."""
    if rng.random() < 0.2:
        return _pick(rng, [o[1] for o in cat["objects"] if o[0] == "dataset"])
    groups = ["/"] + [o[1] for o in cat["objects"] if o[0] == "group"]
    weights = []
    for p in groups:
        if p == "/":
            w = 6
        elif p in ("/layers", "/model", "/dataset") or (p.startswith("/layers/") and p.count("/") == 2):
            w = 4
        elif p.endswith(("/examples/top", "/examples/bottom", "/stats/sketch")):
            w = 3
        else:
            w = 1
        weights.append(w)
    w = np.asarray(weights, float)
    return groups[int(rng.choice(len(groups), p=w / w.sum()))]


def _text_of(v) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.size:
        return _text_of(v.reshape(-1)[0])
    return str(v)[:200]


def _wrong_values(old, f) -> list:
    """(label, value, dtype or None) of the wrongly typed values that replace an attribute."""
    txt = _text_of(old)
    STR, ASCII = h5py.string_dtype("utf-8"), h5py.string_dtype("ascii")
    return [
        ("1-element string array", np.array([txt], dtype=object), STR),
        ("string array", np.array(["a", "b"], dtype=object), STR),
        ("2-D string array", np.array([["a", "b"], ["c", "d"]], dtype=object), STR),
        ("empty string array", np.array([], dtype=object), STR),
        ("scalar string", txt, STR),
        ("number in a string", "6", STR),
        ("int64", np.int64(7), None),
        ("negative int", np.int64(-3), None),
        ("uint64 max", np.uint64((1 << 64) - 1), None),
        ("float", np.float64(6.0), None),
        ("nan", np.float64(np.nan), None),
        ("bool", np.bool_(True), None),
        ("complex", np.complex128(1 + 2j), None),
        ("int array", np.array([6, 8, 8], np.int64), None),
        ("float array", np.array([0.5, np.inf]), None),
        ("fixed-length bytes, not UTF-8", np.bytes_(b"\xff\xfe\x80 scope"), None),
        ("fixed-length copy", np.bytes_(txt.encode("utf-8")), None),
        ("UTF-8 string, not UTF-8", np.array(b"\xff\xfe\xc3\x28" + txt.encode()[:20], dtype=object), STR),
        ("ASCII string, not UTF-8", np.array(b"\xed\xa0\x80" + txt.encode()[:20], dtype=object), ASCII),
        ("string array, not UTF-8", np.array([b"\xc0\xaf", txt.encode()], dtype=object), STR),
        ("null dataspace", h5py.Empty("S10"), None),
        ("null dataspace int", h5py.Empty(np.dtype(np.int64)), None),
        ("compound", np.array((1, 2.0), dtype=[("a", "<i4"), ("b", "<f8")]), None),
        ("object reference", f.ref, None),
        ("enum", np.int8(1), h5py.enum_dtype({"a": 0, "b": 1}, basetype="i1")),
    ]


def _set_attr(obj, key, value, dtype=None) -> None:
    if key in obj.attrs:
        del obj.attrs[key]
    if dtype is None:
        obj.attrs[key] = value
    else:
        obj.attrs.create(key, data=value, dtype=dtype)


def m_attr_type(f, rng, cat) -> str:
    """An attribute of a meaningful element replaced by a value of the wrong type / shape / encoding."""
    path = _attr_element(rng, cat)
    obj = f[path]
    keys = sorted(obj.attrs.keys())
    key = _pick(rng, keys) if keys else "encoding-type"
    old = obj.attrs[key] if key in obj.attrs else ""
    label, value, dtype = _pick(rng, _wrong_values(old, f))
    _set_attr(obj, key, value, dtype)
    return f"attr {path}@{key} -> {label}"


def m_attr_huge(f, rng, cat) -> str:
    """An attribute made huge: a 5 MiB string, 100,000 strings, a 2**20-element number array, 1,000 attributes."""
    path = _attr_element(rng, cat)
    obj = f[path]
    keys = sorted(obj.attrs.keys())
    key = _pick(rng, keys) if keys else "encoding-type"
    txt = _text_of(obj.attrs[key]) if key in obj.attrs else ""
    choice = int(rng.integers(6))
    STR = h5py.string_dtype("utf-8")
    if choice == 0:
        n = int(_pick(rng, [1 << 20, 5 << 20]))
        _set_attr(obj, key, txt + "x" * n, STR)
        what = f"a {n >> 20} MiB string"
    elif choice == 1:
        _set_attr(obj, key, np.array([txt] * 100_000, dtype=object), STR)
        what = "100,000 copies of its string"
    elif choice == 2:
        _set_attr(obj, key, np.array([txt, "y" * (5 << 20)], dtype=object), STR)
        what = "its string and one of 5 MiB"
    elif choice == 3:
        _set_attr(obj, key, np.arange(1 << 20, dtype=np.int64), None)
        what = "2**20 int64"
    elif choice == 4:
        _set_attr(obj, key, np.full((1 << 10, 1 << 10), np.nan), None)
        what = "1024x1024 float64"
    else:
        for i in range(1000):
            obj.attrs[f"x{i:04d}"] = np.int64(i)
        return f"1,000 extra attributes on {path}"
    return f"attr {path}@{key} -> {what}"


def m_attr_shuffle(f, rng, cat) -> str:
    """Attributes deleted, copied from another element, swapped, renamed or duplicated under a near name."""
    path = _attr_element(rng, cat)
    obj = f[path]
    keys = sorted(obj.attrs.keys())
    choice = int(rng.integers(5))
    if choice == 1:  # another element's attributes over these (a layer's over another layer, root's over a group ...)
        src = _attr_element(rng, cat)
        for k, v in list(f[src].attrs.items()):
            _set_attr(obj, k, v, f[src].attrs.get_id(k).dtype if isinstance(v, (str, np.ndarray)) else None)
        return f"attrs of {src} copied onto {path}"
    if not keys:
        return f"attr shuffle: {path} has none"
    if choice == 0:
        n = int(rng.integers(1, len(keys) + 1))
        gone = sorted(rng.choice(len(keys), size=n, replace=False))
        for i in gone:
            del obj.attrs[keys[i]]
        return f"deleted {n}/{len(keys)} attrs of {path}: {[keys[i] for i in gone][:4]}"
    if choice == 2 and len(keys) > 1:
        i, j = (int(x) for x in rng.choice(len(keys), size=2, replace=False))
        vi, vj = obj.attrs[keys[i]], obj.attrs[keys[j]]
        ti, tj = obj.attrs.get_id(keys[i]).dtype, obj.attrs.get_id(keys[j]).dtype
        _set_attr(obj, keys[i], vj, tj)
        _set_attr(obj, keys[j], vi, ti)
        return f"swapped {path}@{keys[i]} and @{keys[j]}"
    key = _pick(rng, keys)
    val, dt = obj.attrs[key], obj.attrs.get_id(key).dtype
    near = _pick(rng, [key.upper(), key + " ", " " + key, key.replace("-", "_").replace("_", "-") + "x", key + "\u200b"])
    if choice == 3:  # renamed: the right value under a wrong name
        del obj.attrs[key]
        _set_attr(obj, near, val, dt)
        return f"renamed {path}@{key} -> {near!r}"
    _set_attr(obj, near, "conflicting" if dt.kind == "O" else val, dt)
    return f"duplicated {path}@{key} as {near!r}"


BYTE_MUTATIONS = {"bitflip": m_bitflip, "truncate": m_truncate, "fill": m_zero_range,
                  "attr_vlen_len": m_attr_vlen_len, "attr_vlen_ref": m_attr_vlen_ref, "attr_space": m_attr_space,
                  "attr_dtype": m_attr_dtype, "attr_bytes": m_attr_bytes, "attr_heap": m_attr_heap}
H5_MUTATIONS = {"delete": m_delete, "duplicate": m_duplicate, "attr": m_attr, "huge_shape": m_huge_shape,
                "indices": m_indices, "floats": m_floats, "strings": m_strings, "retype": m_retype, "blob": m_blob,
                "attr_type": m_attr_type, "attr_huge": m_attr_huge, "attr_shuffle": m_attr_shuffle}
# the kinds before attribute damage, in their order: `mutate(..., kinds=LEGACY_MUTATIONS)` draws cases exactly as
# the fuzzer did then (the findings of the 10,000-case run replay with it)
LEGACY_MUTATIONS = ["bitflip", "truncate", "fill", "delete", "duplicate", "attr", "huge_shape", "indices", "floats",
                    "strings", "retype", "blob"]
ATTR_MUTATIONS = ["attr_vlen_len", "attr_vlen_ref", "attr_space", "attr_dtype", "attr_bytes", "attr_heap",
                  "attr_type", "attr_huge", "attr_shuffle"]
ALL_MUTATIONS = LEGACY_MUTATIONS + ATTR_MUTATIONS
assert sorted(ALL_MUTATIONS) == sorted(list(BYTE_MUTATIONS) + list(H5_MUTATIONS))
RAW_MUTATIONS = {"bitflip", "truncate", "fill"} | set(ATTR_MUTATIONS[:6])  # byte-exact: same seed, same bytes
_V110 = set(ATTR_MUTATIONS[6:])  # written as scope writes (large attributes need the v1.8+ dense storage)


def mutate(base: str, cat: dict, out: str, seed: int, kind: str | None = None,
           kinds: list[str] | None = None) -> tuple[str, str]:
    """Write a mutated copy of `base` to `out`; returns (mutation kind, description). Deterministic in seed.

    kind: this mutation; else one drawn from `kinds` (default ALL_MUTATIONS) with the seed's generator."""
    rng = np.random.default_rng(seed)
    kind = kind or _pick(rng, kinds or ALL_MUTATIONS)
    if kind in BYTE_MUTATIONS:
        with open(base, "rb") as fh:
            raw = bytearray(fh.read())
        desc = BYTE_MUTATIONS[kind](raw, rng, cat)
        with open(out, "wb") as fh:
            fh.write(raw)
        return kind, desc
    shutil.copyfile(base, out)
    with h5py.File(out, "r+", **({"libver": ("v110", "v110")} if kind in _V110 else {})) as f:
        desc = H5_MUTATIONS[kind](f, rng, cat)
    return kind, desc


# ------------------------------------------------------------------------------------------------- commands


def commands(path: str, base: str, work: str, rng) -> list[list[str]]:
    """The read commands run on each mutated file (human or --json output, drawn per case)."""
    js = ["--json"] if rng.random() < 0.5 else []
    unit = _pick(rng, [f"{FC}:1", f"{CONV}:2", f"{CONV}:0", f"{FC}:3"])
    return [
        ["info", path] + js,
        ["validate", path] + js,
        ["show", path, unit, "-o", os.path.join(work, "card.png")] + js,
        _pick(rng, [["query", path, "--label", "cat"], ["query", path, "--like", f"{path}:{unit}", "--top", "3"],
                    ["query", path, "--min-max", "0", "--sort", "frac-positive"]]) + js,
        ["diff", path, base, "--permutations", "2", "--quiet"] + js,
        ["export", path, "-o", os.path.join(work, "site"), "--quiet"] + js,
    ]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`scope ARGV` in this process through the real entry point: (exit code, stdout, stderr)."""
    from scopecli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # main() should never let anything out
            err.write("ESCAPED " + traceback.format_exc())
            code = -1
    return code, out.getvalue(), err.getvalue()


def judge(code: int, stderr: str) -> str:
    """ok | clean (exit 1/2, one `error:` line) | crash (anything else: internal error, traceback, noise)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 0:
        return "ok" if not lines else "noise"
    # scope's own "error: internal error ..." line is a bug; libhdf5's words "(internal error (unknown dataspace
    # class))" quoted inside a clean message are not
    if code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: ") \
            and not lines[0].startswith("error: internal error") and "out of memory" not in lines[0]:
        return "clean"
    return "crash"


# ------------------------------------------------------------------------------------------------- runner


@dataclass
class FuzzReport:
    cases: int = 0
    commands: int = 0
    verdicts: Counter = field(default_factory=Counter)  # per command run
    case_verdicts: Counter = field(default_factory=Counter)  # worst verdict per case
    by_mutation: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)  # (case, mutation, command, verdict, stderr line)
    seconds: float = 0.0
    # memory: RSS growth of the worker over its baseline (after imports, before its first case), in MiB
    memory_method: str = ""  # how peaks were measured (VmHWM reset per command, or VmRSS polled)
    baseline_mb: float = 0.0  # the largest worker baseline seen
    peak_growth_mb: float = 0.0  # the largest growth seen in any command (a killed one: as far as it got)
    peak_at: tuple = ()  # (case, mutation, command) of that peak

    def bad(self) -> list:
        return self.failures


def _worker(conn, bases, cats, work, seed0, mutations, per_case):
    import warnings

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warnings.simplefilter("default")
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass
    memwatch.warm_imports()  # what the commands import on first use: part of the baseline, not of a case
    resettable = memwatch.peak_is_resettable()
    conn.send(("ready", memwatch.mem_kb().get("VmRSS", 0), resettable))
    names = sorted(bases)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case = msg
        rng = np.random.default_rng([seed0, case])
        bname = names[int(rng.integers(len(names)))]
        path = os.path.join(work, f"case{case % 4}.h5")
        cwork = os.path.join(work, "out")
        shutil.rmtree(cwork, ignore_errors=True)
        os.makedirs(cwork)
        try:
            kind, desc = mutate(bases[bname], cats[bname], path, int(rng.integers(1 << 62)), kinds=mutations)
        except Exception as exc:  # a mutation that h5py cannot write: not a scope finding
            conn.send(("case", case, "unmutable", f"{bname}: {type(exc).__name__}: {exc}"))
            continue
        conn.send(("case", case, kind, f"{bname}: {desc}"))
        argvs = commands(path, bases["full"], cwork, rng)
        if per_case:
            argvs = [argvs[i] for i in sorted(rng.choice(len(argvs), size=min(per_case, len(argvs)), replace=False))]
        for argv in argvs:
            if resettable:
                memwatch.reset_peak()  # VmHWM now measures this command alone (from the RSS it starts with)
            conn.send(("start", argv[0]))
            code, out, err = run_cli(argv)
            peak = memwatch.mem_kb().get("VmHWM") if resettable else None
            if resettable:
                memwatch.reset_peak()
            conn.send(("done", argv[0], judge(code, err), err[:1000] + (" … " + err[-1000:] if len(err) > 2000 else err[1000:2000]),
                       peak))
        conn.send(("end", case))


def _rss_mb(pid: int) -> float:
    return memwatch.mem_kb(pid).get("VmRSS", 0) / 1024


_RANK = {"ok": 0, "clean": 1, "noise": 2, "crash": 3, "memory": 4, "hang": 5}
POLL_S = 0.02  # how often the parent looks at a running command (its clock and its memory)


def fuzz(n_cases: int, seed: int = 0, start: int = 0, timeout_s: float = 20.0, growth_limit_mb: float = 1024.0,
         rss_limit_mb: float | None = None, mutations: list[str] | None = None, on_case=None, recycle: int = 2000,
         per_case: int | None = None, on_failure=None) -> FuzzReport:
    """Run `n_cases` seeded cases; each command is killed after timeout_s, or when it makes the worker's RSS grow
    beyond growth_limit_mb over its baseline (RSS after imports, before its first case); rss_limit_mb, when
    given, is an absolute RSS limit on top.

    Memory: the worker resets its peak RSS (VmHWM, via /proc/self/clear_refs) before each command and reports
    the command's peak when it ends, so a spike between two looks is not missed; meanwhile the parent reads
    VmHWM every POLL_S seconds and kills a command that is past the limit (where VmHWM cannot be reset, it
    polls VmRSS instead). A command that ends past the limit counts as a blow-up too.

    mutations: draw the kinds from these (default ALL_MUTATIONS); per_case: run only that many of the
    commands, drawn per case (the test suite's quick mode)."""
    rep = FuzzReport()
    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="scope-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    growth_kb = growth_limit_mb * 1024

    def memory_failure(case, desc, cmd, grown_kb, base_kb, how):
        return (case, desc, cmd, "memory", f"RSS grew by {grown_kb / 1024:.0f} MiB over the worker's baseline of "
                                           f"{base_kb / 1024:.0f} MiB ({how}; limit {growth_limit_mb:.0f} MiB)")

    try:
        bases = build_bases(root)
        cats = {k: catalogue(v) for k, v in bases.items()}
        ctx = mp.get_context("fork")
        proc = conn = None
        case = start
        done_in_worker = 0
        base_kb, resettable = 0, False
        while case < start + n_cases:
            if proc is None or done_in_worker >= recycle:
                if proc is not None:
                    conn.send(None)
                    proc.join(10)
                work = tempfile.mkdtemp(dir=root)
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, bases, cats, work, seed, mutations, per_case), daemon=True)
                proc.start()
                child.close()
                done_in_worker = 0
                if not conn.poll(300):
                    raise RuntimeError("fuzz worker did not start")
                _, base_kb, resettable = conn.recv()
                rep.baseline_mb = max(rep.baseline_mb, base_kb / 1024)
                rep.memory_method = (f"VmHWM reset per command, read when it ends and every {POLL_S * 1000:.0f} ms"
                                     if resettable else f"VmRSS polled every {POLL_S * 1000:.0f} ms")
            conn.send(case)
            worst, kind, desc, current = "ok", "?", "", None
            started = time.perf_counter()
            while True:
                failure = None
                if conn.poll(POLL_S):
                    try:
                        msg = conn.recv()
                    except EOFError:
                        msg = ("died",)
                    if msg[0] == "case":
                        kind, desc = msg[2], msg[3]
                        if kind == "unmutable":
                            break
                    elif msg[0] == "start":
                        current, started = msg[1], time.perf_counter()
                    elif msg[0] == "done":
                        v = msg[2]  # judged in the worker, on the whole stderr
                        if msg[4] is not None:
                            grown = msg[4] - base_kb
                            if grown / 1024 > rep.peak_growth_mb:
                                rep.peak_growth_mb, rep.peak_at = grown / 1024, (case, desc, msg[1])
                            if grown > growth_kb:
                                failure = memory_failure(case, desc, msg[1], grown, base_kb, "peak of a command that ended")
                        if failure is None:
                            rep.commands += 1
                            rep.verdicts[v] += 1
                            if v in ("crash", "noise"):
                                rep.failures.append((case, desc, msg[1], v, msg[3].strip()[-600:]))
                                if on_failure:
                                    on_failure(rep.failures[-1])
                            worst = max(worst, v, key=_RANK.get)
                            current = None
                    elif msg[0] == "end":
                        break
                    elif msg[0] == "died":
                        v = "crash"
                        proc.join(5)
                        rep.failures.append((case, desc, current, "worker died", f"exit code {proc.exitcode}"))
                        if on_failure:
                            on_failure(rep.failures[-1])
                        worst = max(worst, v, key=_RANK.get)
                        proc = None
                        break
                    if failure is None:
                        continue
                if failure is None:
                    mem = memwatch.mem_kb(proc.pid)
                    used = mem.get("VmHWM" if resettable else "VmRSS", 0)
                    if current and used - base_kb > rep.peak_growth_mb * 1024:
                        rep.peak_growth_mb, rep.peak_at = (used - base_kb) / 1024, (case, desc, current)
                    if current and time.perf_counter() - started > timeout_s:
                        failure = (case, desc, current, "hang", "")
                    elif current and used - base_kb > growth_kb:
                        failure = memory_failure(case, desc, current, used - base_kb, base_kb, "killed")
                    elif rss_limit_mb and mem.get("VmRSS", 0) > rss_limit_mb * 1024:
                        failure = (case, desc, current, "memory", f"RSS {mem['VmRSS'] / 1024:.0f} MiB is beyond "
                                                                   f"the absolute limit of {rss_limit_mb:.0f} MiB")
                    elif not proc.is_alive():
                        failure = (case, desc, current, "crash", f"worker died, exit code {proc.exitcode}")
                if failure:
                    v = failure[3]
                    rep.commands += 1
                    rep.verdicts[v] += 1
                    rep.failures.append(failure)
                    if on_failure:
                        on_failure(rep.failures[-1])
                    worst = max(worst, v, key=_RANK.get)
                    proc.kill()
                    proc.join()
                    proc = None
                    break
            rep.cases += 1
            rep.case_verdicts[worst] += 1
            rep.by_mutation[(kind, worst)] += 1
            done_in_worker += 1
            case += 1
            if on_case:
                on_case(rep)
        if proc is not None:
            conn.send(None)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rep.seconds = time.perf_counter() - t0
    return rep


def case_file(seed: int, case: int, out: str, mutations: list[str] | None = None) -> tuple[str, str]:
    """Rebuild the mutated file of one case (to debug a finding; pass the run's --mutation kinds): returns
    (path of the full base, for diff, description)."""
    folder = tempfile.mkdtemp()
    bases = build_bases(folder)
    names = sorted(bases)
    rng = np.random.default_rng([seed, case])
    bname = names[int(rng.integers(len(names)))]
    kind, desc = mutate(bases[bname], catalogue(bases[bname]), out, int(rng.integers(1 << 62)), kinds=mutations)
    return bases["full"], f"{bname}: {kind}: {desc}"
