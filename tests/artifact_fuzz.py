"""Seeded mutation fuzzing of scope artifacts: break valid files, run every read command, judge the exits.

Used by `tests/test_fuzz_artifacts.py` (a few hundred cases) and `scripts/fuzz_artifacts.py N` (thousands).

A case = (base artifact, mutation drawn from the case seed). The mutated file is fed to `info`, `validate`,
`show`, `query`, `diff` and `export` through the real entry point `scopecli.cli.main`, in a worker process
that runs many cases in a row (fast), watched by its parent (a per-command timeout and an RSS limit kill
the worker; a fresh one goes on with the next case). Every command must end with exit 0, or exit 1/2 and
exactly one `error:` line on stderr that is not scope's "internal error" line.
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

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    size = os.path.getsize(path)
    mask = np.zeros(size, bool)
    for a, b in data_ranges:
        mask[a:b] = True
    meta = np.flatnonzero(~mask)
    return {"objects": objs, "size": size, "meta_positions": meta}


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


BYTE_MUTATIONS = {"bitflip": m_bitflip, "truncate": m_truncate, "fill": m_zero_range}
H5_MUTATIONS = {"delete": m_delete, "duplicate": m_duplicate, "attr": m_attr, "huge_shape": m_huge_shape,
                "indices": m_indices, "floats": m_floats, "strings": m_strings, "retype": m_retype, "blob": m_blob}
ALL_MUTATIONS = list(BYTE_MUTATIONS) + list(H5_MUTATIONS)


def mutate(base: str, cat: dict, out: str, seed: int, kind: str | None = None) -> tuple[str, str]:
    """Write a mutated copy of `base` to `out`; returns (mutation kind, description). Deterministic in seed."""
    rng = np.random.default_rng(seed)
    kind = kind or _pick(rng, ALL_MUTATIONS)
    if kind in BYTE_MUTATIONS:
        with open(base, "rb") as fh:
            raw = bytearray(fh.read())
        desc = BYTE_MUTATIONS[kind](raw, rng, cat)
        with open(out, "wb") as fh:
            fh.write(raw)
        return kind, desc
    shutil.copyfile(base, out)
    with h5py.File(out, "r+") as f:
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
    if code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in lines[0] \
            and "out of memory" not in lines[0]:
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
            kind, desc = mutate(bases[bname], cats[bname], path, int(rng.integers(1 << 62)),
                                _pick(rng, mutations) if mutations else None)
        except Exception as exc:  # a mutation that h5py cannot write: not a scope finding
            conn.send(("case", case, "unmutable", f"{bname}: {type(exc).__name__}: {exc}"))
            continue
        conn.send(("case", case, kind, f"{bname}: {desc}"))
        argvs = commands(path, bases["full"], cwork, rng)
        if per_case:
            argvs = [argvs[i] for i in sorted(rng.choice(len(argvs), size=min(per_case, len(argvs)), replace=False))]
        for argv in argvs:
            conn.send(("start", argv[0]))
            code, out, err = run_cli(argv)
            conn.send(("done", argv[0], judge(code, err), err[:1000] + (" … " + err[-1000:] if len(err) > 2000 else err[1000:2000])))
        conn.send(("end", case))


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


_RANK = {"ok": 0, "clean": 1, "noise": 2, "crash": 3, "memory": 4, "hang": 5}


def fuzz(n_cases: int, seed: int = 0, start: int = 0, timeout_s: float = 20.0, rss_limit_mb: float = 2000.0,
         mutations: list[str] | None = None, on_case=None, recycle: int = 2000,
         per_case: int | None = None, on_failure=None) -> FuzzReport:
    """Run `n_cases` seeded cases; each command is killed after timeout_s or beyond rss_limit_mb of RSS.

    per_case: run only that many of the commands, drawn per case (the test suite's quick mode)."""
    rep = FuzzReport()
    t0 = time.perf_counter()
    root = tempfile.mkdtemp(prefix="scope-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        bases = build_bases(root)
        cats = {k: catalogue(v) for k, v in bases.items()}
        ctx = mp.get_context("fork")
        proc = conn = None
        case = start
        done_in_worker = 0
        while case < start + n_cases:
            if proc is None or done_in_worker >= recycle:
                if proc is not None:
                    conn.send(None)
                    proc.join(10)
                work = tempfile.mkdtemp(dir=root)
                conn, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, bases, cats, work, seed, mutations, per_case), daemon=True)
                proc.start()
                done_in_worker = 0
            conn.send(case)
            worst, kind, desc, current = "ok", "?", "", None
            started = time.perf_counter()
            while True:
                if conn.poll(0.05):
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
                        rep.failures.append((case, desc, current, "worker died", ""))
                        worst = max(worst, v, key=_RANK.get)
                        proc = None
                        break
                    continue
                v = None
                if current and time.perf_counter() - started > timeout_s:
                    v = "hang"
                elif _rss_mb(proc.pid) > rss_limit_mb:
                    v = "memory"
                elif not proc.is_alive():
                    v = "crash"
                if v:
                    rep.commands += 1
                    rep.verdicts[v] += 1
                    rep.failures.append((case, desc, current, v, ""))
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


def case_file(seed: int, case: int, out: str) -> tuple[str, str]:
    """Rebuild the mutated file of one case (to debug a finding): returns (path of base kind, description)."""
    folder = tempfile.mkdtemp()
    bases = build_bases(folder)
    names = sorted(bases)
    rng = np.random.default_rng([seed, case])
    bname = names[int(rng.integers(len(names)))]
    kind, desc = mutate(bases[bname], catalogue(bases[bname]), out, int(rng.integers(1 << 62)))
    return bases["full"], f"{bname}: {desc}"
