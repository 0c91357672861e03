"""Low-level HDF5 I/O for scope files: typed datasets with encoding attributes and sha256, bounded reads.

Writers go through `write_array` / `write_strings` / `write_blob` so every dataset gets the same
storage rules (chunked + fletcher32 for non-empty numeric data, gzip only, sha256 of canonical bytes).
Readers check each element's encoding type and version with `check_element` (the element registry
picks the element by its place in the file), fetch children with `get_dataset`/`get_group` (hard
links only, sane sizes, allowed filters) and attributes with `read_attr`, whose memory is bounded:
a damaged file from a stranger must not make libhdf5 allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import os
import threading

import h5py
import numpy as np

from scopecli.artifact.layout import (ARRAY_CHUNK_BYTES, BLOB_CHUNK, ENC_ARRAY, ENC_BYTES, ENC_STRING, ENC_STRINGS,
    ENCODING_VERSION, MAX_DATASET_BYTES, MAX_ELEMENTS_PER_DIM, MAX_STRING_BYTES, canonical_bytes_sha256)
from scopecli.core.errors import ScopeError

STR = h5py.string_dtype("utf-8")
MAX_EXPANSION = 1100  # declared bytes per stored byte a reader accepts (gzip's limit is ~1032)
GZIP_MIN_BYTES = 4096


def set_encoding(obj, enc_type: str, version: str = ENCODING_VERSION) -> None:
    obj.attrs["encoding-type"] = enc_type
    obj.attrs["encoding-version"] = version


def _chunks_for(shape: tuple[int, ...], itemsize: int, target: int) -> tuple[int, ...]:
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    rows = max(1, min(shape[0], target // max(row, 1)))
    return (rows,) + tuple(shape[1:])


def write_array(group: h5py.Group, name: str, data, dtype) -> h5py.Dataset:
    """A numeric dataset: chunked + fletcher32 (+ gzip when > 4 KiB) when non-empty, contiguous when empty."""
    arr = np.ascontiguousarray(np.asarray(data, dtype=dtype))
    if arr.ndim == 0 or arr.size == 0:
        ds = group.create_dataset(name, data=arr)
    else:
        kw = {}
        if arr.nbytes > GZIP_MIN_BYTES:
            kw = dict(compression="gzip", compression_opts=4, shuffle=arr.dtype.itemsize > 1)
        ds = group.create_dataset(
            name, data=arr, chunks=_chunks_for(arr.shape, arr.dtype.itemsize, ARRAY_CHUNK_BYTES),
            fletcher32=True, **kw,
        )
    set_encoding(ds, ENC_ARRAY)
    ds.attrs["sha256"] = canonical_bytes_sha256(arr)
    return ds


def write_blob(group: h5py.Group, name: str, data: bytes | np.ndarray) -> h5py.Dataset:
    """The concatenated encoded images of one section: uint8 [B], chunked + fletcher32, never gzipped."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data, np.uint8)
    if arr.size == 0:
        ds = group.create_dataset(name, data=arr)
    else:
        ds = group.create_dataset(name, data=arr, chunks=(min(arr.size, BLOB_CHUNK),), fletcher32=True)
    set_encoding(ds, ENC_BYTES)
    ds.attrs["sha256"] = canonical_bytes_sha256(arr)
    return ds


def write_strings(group: h5py.Group, name: str, values) -> h5py.Dataset:
    """A 1-D variable-length UTF-8 string dataset (contiguous)."""
    vals = [str(v) for v in values]
    ds = group.create_dataset(name, shape=(len(vals),), dtype=STR)
    if vals:
        ds[...] = np.array(vals, dtype=object)
    set_encoding(ds, ENC_STRINGS)
    ds.attrs["sha256"] = canonical_bytes_sha256(np.array(vals, dtype=object))
    return ds


def write_string(group: h5py.Group, name: str, value: str) -> h5py.Dataset:
    """A scalar variable-length UTF-8 string dataset (spec text, JSON documents)."""
    ds = group.create_dataset(name, data=str(value), dtype=STR)
    set_encoding(ds, ENC_STRING)
    ds.attrs["sha256"] = canonical_bytes_sha256(np.array([str(value)], dtype=object))
    return ds


def str_list_attr(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=STR)


# ----------------------------------------------------------------------------------------------- reading


MAX_ATTR_BYTES = 1 << 20  # declared bytes of one attribute's value (spec: small scalars and short lists)
ATTR_READ_MEMORY = 256 << 20  # what reading one variable-length attribute may allocate at most
_MISSING = object()
_MEMORY_LOCK = threading.Lock()


def _vm_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextlib.contextmanager
def bounded_memory(extra: int = ATTR_READ_MEMORY):
    """Let the block allocate at most `extra` more bytes of address space (Linux; elsewhere no bound).

    Why: a variable-length string keeps its length in a descriptor that libhdf5 trusts; a damaged one
    makes it allocate (and fill) up to 4 GiB per string before it finds the heap object too short. For
    datasets the descriptors are checked straight from the file (`check_string_lengths`); attributes
    live inside object headers, so their reads run under an address-space limit instead, and a huge
    allocation fails inside libhdf5 as a read error.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        yield
        return
    with _MEMORY_LOCK:
        vm = _vm_bytes()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = None if vm is None else vm + extra
        if limit is not None and hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if limit is not None and soft != resource.RLIM_INFINITY:
            limit = min(limit, soft)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        try:
            yield
        finally:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_ATTR_CLASSES = {h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.STRING, h5py.h5t.ENUM}


def _check_attr_type(tid, where: str, key: str) -> None:
    """Scope writes numbers, strings and booleans (an h5py enum of int8) as attributes; anything else (a
    variable-length sequence, compound, reference, ...) is damage, and h5py can crash converting it."""
    cls = tid.get_class()
    ok = cls in _ATTR_CLASSES and 0 < tid.get_size() <= MAX_ATTR_BYTES
    if ok and cls == h5py.h5t.STRING:
        ok = tid.get_cset() in (h5py.h5t.CSET_ASCII, h5py.h5t.CSET_UTF8)
    if ok and cls == h5py.h5t.ENUM:
        base = tid.get_super()
        ok = base.get_class() == h5py.h5t.INTEGER and base.get_size() <= 8
    if ok and cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
        ok = tid.get_size() <= 16
    if not ok:
        raise ScopeError(f"{where}: attribute {short_repr(key)} has a datatype scope never writes (class {cls}); "
                         "the file is corrupt")


def read_attr(obj, key: str, where: str, default=_MISSING):
    """One attribute's value (as h5py gives it), refusing sizes beyond MAX_ATTR_BYTES and reading
    variable-length values under `bounded_memory`. `default` is returned when it is absent."""
    try:
        if key not in obj.attrs:
            if default is _MISSING:
                raise ScopeError(f"{where}: missing attribute {key!r}")
            return default
        aid = h5py.h5a.open(obj.id, key.encode("utf-8"))
        shape = aid.shape
        _check_attr_type(aid.get_type(), where, key)
        dtype = aid.dtype
    except ScopeError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ScopeError(f"{where}: attribute {short_repr(key)} unreadable ({first_line(exc)}); the file is corrupt")
    n = 1
    for d in shape or ():
        n *= int(d)
    variable = dtype.kind == "O"
    declared = n * (16 if variable else dtype.itemsize)
    if declared > MAX_ATTR_BYTES or n > MAX_ATTR_BYTES:
        raise ScopeError(f"{where}: attribute {short_repr(key)} declares {declared} bytes, beyond sane bounds; "
                         "the file is corrupt")
    try:
        if variable:
            with bounded_memory():
                return obj.attrs[key]
        return obj.attrs[key]
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, MemoryError, UnicodeDecodeError) as exc:
        raise ScopeError(f"{where}: attribute {short_repr(key)} unreadable ({first_line(exc)}); the file is corrupt")


def attr_str(obj, key: str, where: str) -> str:
    v = read_attr(obj, key, where, None)
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError:
            raise ScopeError(f"{where}: attribute {key!r} is not UTF-8")
    if not isinstance(v, str):
        raise ScopeError(f"{where}: missing or non-string attribute {key!r}")
    return v


def attr_int(obj, key: str, where: str, lo: int = -(1 << 62), hi: int = 1 << 62, default: int | None = None) -> int:
    """An integer attribute in lo..hi (`default` when it is absent and a default is given), else one clear error."""
    if default is not None and key not in obj.attrs:
        return default
    v = read_attr(obj, key, where, None)
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.reshape(-1)[0]
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
        raise ScopeError(f"{where}: missing or non-integer attribute {key!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ScopeError(f"{where}: attribute {key!r}={v} is outside {lo}..{hi}")
    return v


def attr_float(obj, key: str, where: str, default: float | None = None) -> float:
    """A real-number attribute (`default` when absent and given; NaN allowed), else one clear error."""
    if default is not None and key not in obj.attrs:
        return default
    v = read_attr(obj, key, where, None)
    if isinstance(v, np.ndarray) and v.shape in ((), (1,)):
        v = v.reshape(-1)[0]
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
        raise ScopeError(f"{where}: missing or non-numeric attribute {key!r}")
    return float(v)


def attr_str_list(obj, key: str, where: str) -> list[str]:
    v = read_attr(obj, key, where, None)
    if v is None:
        raise ScopeError(f"{where}: missing attribute {key!r}")
    arr = np.asarray(v).reshape(-1)
    out = []
    for x in arr:
        if isinstance(x, bytes):
            x = x.decode("utf-8", errors="replace")
        out.append(str(x))
    return out


def attr_text(obj, key: str, where: str, default: str | None = None) -> str | None:
    """A string attribute decoded leniently (bytes -> UTF-8 with replacement), or `default` when absent
    or not a string: for optional attributes whose absence is not an error."""
    v = read_attr(obj, key, where, None)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v if isinstance(v, str) else default


def encoding_of(obj, where: str = "") -> tuple[str | None, str | None]:
    """(encoding-type, encoding-version) of an element; None for what is absent or not a string."""
    return attr_text(obj, "encoding-type", where or str(obj.name)), attr_text(obj, "encoding-version", where or str(obj.name))


def check_element(obj, enc_type: str, where: str, kind: type | None = None) -> None:
    """Refuse an element that is not of encoding `enc_type` at a major version this reader knows."""
    if kind is not None and not isinstance(obj, kind):
        raise ScopeError(f"{where}: expected an HDF5 {kind.__name__.lower()}, found {type(obj).__name__.lower()}")
    t, v = encoding_of(obj, where)
    if t != enc_type:
        raise ScopeError(f"{where}: encoding-type is {short_repr(t)}, expected {enc_type!r}")
    try:
        major = int(str(v).split(".")[0])
    except ValueError:
        raise ScopeError(f"{where}: bad encoding-version {short_repr(v)}")
    if major > int(ENCODING_VERSION.split(".")[0]):
        raise ScopeError(f"{where}: encoding {t} version {v} is newer than this reader; upgrade scope")


def _hard_child(group: h5py.Group, name: str, where: str, required: bool, kind: type, what: str):
    """A child reached by a hard link only (no soft/external links out of the file), of the expected kind."""
    link = group.get(name, getlink=True)
    if link is None:
        if required:
            raise ScopeError(f"{where}: missing {what} {name!r}")
        return None
    if not isinstance(link, h5py.HardLink):
        raise ScopeError(f"{where}/{name}: {type(link).__name__} is not allowed in an artifact")
    child = group[name]
    if not isinstance(child, kind):
        found = "group" if isinstance(child, h5py.Group) else "dataset"
        raise ScopeError(f"{where}/{name}: expected a {what}, found a {found}")
    return child


def get_dataset(group: h5py.Group, name: str, where: str, required: bool = True) -> h5py.Dataset | None:
    """A child dataset, refusing links that leave the file, virtual/external storage and unknown filters."""
    ds = _hard_child(group, name, where, required, h5py.Dataset, "dataset")
    if ds is not None:
        check_dataset_storage(ds, f"{where}/{name}")
    return ds


def get_group(group: h5py.Group, name: str, where: str, required: bool = True) -> h5py.Group | None:
    """A child group, refusing links that leave the file."""
    return _hard_child(group, name, where, required, h5py.Group, "group")


ALLOWED_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "gzip",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
}


def check_dataset_storage(ds: h5py.Dataset, where: str) -> None:
    """Refuse virtual or external datasets, filters other than gzip/shuffle/fletcher32, insane sizes."""
    if ds.is_virtual:
        raise ScopeError(f"{where}: virtual datasets are not allowed in an artifact")
    if ds.external:
        raise ScopeError(f"{where}: external storage is not allowed in an artifact")
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise ScopeError(f"{where}: HDF5 filter {code} is not allowed (only gzip, shuffle, fletcher32)")
    shape = ds.shape or ()
    if ds.shape is None:
        raise ScopeError(f"{where}: null dataspace is not allowed")
    n = 1
    for d in shape:
        if d > MAX_ELEMENTS_PER_DIM:
            raise ScopeError(f"{where}: declared size {shape} is beyond sane bounds")
        n *= d
    item = ds.dtype.itemsize if ds.dtype.kind != "O" else 16
    if n * item > MAX_DATASET_BYTES:
        raise ScopeError(f"{where}: declared size {shape} ({n * item} bytes) is beyond sane bounds")
    # no decompression bombs: what a read allocates must be proportional to what the file stores
    # (gzip cannot exceed ~1032:1; unallocated storage reads as fill values and counts as nothing)
    if n * item > (1 << 20) and n * item > MAX_EXPANSION * ds.id.get_storage_size():
        raise ScopeError(f"{where}: declares {n * item} bytes but stores only {ds.id.get_storage_size()}; "
                         "beyond sane bounds")


def read_numeric(ds: h5py.Dataset, where: str, kind: str, ndim: int) -> np.ndarray:
    """Read a whole numeric dataset, checking its dtype kind ('i', 'u', 'f') and rank."""
    if ds.dtype.kind != kind or ds.ndim != ndim:
        raise ScopeError(f"{where}: expected a {ndim}-D array of kind {kind!r}, found {ds.dtype} {ds.shape}")
    try:
        return ds[()]
    except OSError as exc:
        raise ScopeError(f"{where}: unreadable data ({first_line(exc)}); the file is corrupt")


def check_string_lengths(ds: h5py.Dataset, where: str) -> None:
    """Refuse variable-length strings that declare more than MAX_STRING_BYTES each, before libhdf5 reads them.

    libhdf5 allocates each string's declared length (up to 4 GiB) before it finds the heap address bad, so a
    damaged descriptor costs gigabytes of memory (found by fuzzing). Strings are stored contiguous (spec), so
    their descriptors (uint32 length, heap address, heap index) are read straight from the file."""
    if ds.dtype.kind != "O":
        return
    n = 1
    for d in ds.shape or ():
        n *= d
    if n == 0:
        return
    if ds.chunks is not None:
        raise ScopeError(f"{where}: variable-length strings must be stored contiguous")
    off, size = ds.id.get_offset(), ds.id.get_storage_size()
    if off is None or size == 0:
        return
    if size % n or size // n not in (12, 16):
        raise ScopeError(f"{where}: string storage of {size} bytes does not hold {n} string descriptors")
    try:
        with open(ds.file.filename, "rb") as fh:
            fh.seek(off)
            raw = fh.read(size)
    except OSError as exc:
        raise ScopeError(f"{where}: unreadable strings ({first_line(exc)})")
    if len(raw) != size:
        raise ScopeError(f"{where}: string descriptors run past the end of the file; the file is truncated")
    lengths = np.frombuffer(raw, dtype=np.dtype([("len", "<u4"), ("rest", f"V{size // n - 4}")]))["len"]
    if lengths.max() > MAX_STRING_BYTES or int(lengths.sum(dtype=np.uint64)) > MAX_DATASET_BYTES:
        raise ScopeError(f"{where}: a string declares {int(lengths.max())} bytes, beyond sane bounds; "
                         "the file is corrupt")


def read_strings(ds: h5py.Dataset, where: str) -> list[str]:
    if ds.dtype.kind not in ("O", "S") or ds.ndim != 1:
        raise ScopeError(f"{where}: expected a 1-D string array, found {ds.dtype} {ds.shape}")
    check_string_lengths(ds, where)
    try:
        return list(ds.asstr()[()]) if ds.shape[0] else []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScopeError(f"{where}: unreadable strings ({first_line(exc)})")


def read_string(ds: h5py.Dataset, where: str) -> str:
    if ds.dtype.kind not in ("O", "S") or ds.ndim != 0:
        raise ScopeError(f"{where}: expected a scalar string, found {ds.dtype} {ds.shape}")
    check_string_lengths(ds, where)
    try:
        v = ds.asstr()[()]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ScopeError(f"{where}: unreadable string ({first_line(exc)})")
    return str(v)


def first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


GCOL_HEADER = b"GCOL\x01\x00\x00\x00"  # global heap collection, version 1, 3 reserved zero bytes


def check_global_heaps(path: str) -> None:
    """Refuse a file whose HDF5 global heap holds a zero-size free-space object or reaches past the file's end.

    Variable-length strings live in global heap collections; libhdf5 (up to 2.0 at least) loops forever
    decoding a collection whose free-space object has size 0 (e.g. zeroed bytes), holding the GIL, so not even
    Ctrl-C stops it; and it allocates a collection's declared size before reading it. Found by fuzzing. A collection is recognised by its 8-byte header and walked like libhdf5
    does; random image bytes would also need the size field and a zero object to match, so valid files pass.
    """
    import mmap

    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 16:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            p = mm.find(GCOL_HEADER)
            while p >= 0:
                coll = int.from_bytes(mm[p + 8 : p + 16], "little")
                end = p + coll
                if end > size:  # libhdf5 would allocate `coll` bytes (up to 16 EiB) before noticing
                    raise ScopeError(f"{path}: corrupt HDF5 global heap at byte {p} (declares {coll} bytes, beyond "
                                     "the end of the file); the file is damaged")
                if 16 <= coll:
                    q = p + 16
                    while q + 16 <= end:
                        idx = int.from_bytes(mm[q : q + 2], "little")
                        osize = int.from_bytes(mm[q + 8 : q + 16], "little")
                        step = osize if idx == 0 else 16 + ((osize + 7) // 8) * 8
                        if step == 0 or q + step > end:  # loops forever / reads (and allocates) past the heap
                            raise ScopeError(f"{path}: corrupt HDF5 global heap object at byte {q} "
                                             f"({'zero size' if step == 0 else 'larger than its heap'}); "
                                             "the file is damaged")
                        q += step
                p = mm.find(GCOL_HEADER, p + 1)


H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError)


def raised_by_h5py(exc: BaseException) -> bool:
    """True when the innermost frame of `exc` is inside h5py: corrupt metadata, not a bug in scope."""
    if not isinstance(exc, H5_ERRORS):
        return False
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and "h5py" in last.tb_frame.f_code.co_filename


def short_repr(value, limit: int = 60) -> str:
    """repr() for error messages, cut to `limit` characters (a hostile file may hold megabyte strings)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"
