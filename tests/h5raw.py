"""Find HDF5 attribute messages in a file's raw bytes, so tests and the fuzzer can damage them precisely.

Scope writes with libver v110: object headers are version 2 ("OHDR" + "OCHK" continuation chunks), each chunk
ending in a Jenkins lookup3 checksum, and attribute messages are version 3. libhdf5 checks the chunk checksums,
so damage that should reach the attribute decoder (not just "incorrect metadata checksum") has to recompute
them: `fix_checksum`. Variable-length string values are 16-byte descriptors (uint32 length, 8-byte global
heap collection address, uint32 object index) inside the message; the characters live in a "GCOL" collection.

    raw = bytearray(open(path, "rb").read())
    for a in attribute_messages(raw):         # AttrMsg: name, offsets of datatype / dataspace / data, chunk
        ...
    fix_checksum(raw, a.chunk)

Only what scope writes is understood (8-byte offsets and lengths, compact attribute storage in headers);
anything else is skipped, never guessed at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MASK = 0xFFFFFFFF
MSG_CONTINUATION, MSG_ATTRIBUTE = 0x10, 0x0C
DT_FIXED, DT_FLOAT, DT_STRING, DT_VLEN = 0, 1, 3, 9
GCOL_HEADER = b"GCOL\x01\x00\x00\x00"  # global heap collection, version 1


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle, as libhdf5's H5_checksum_lookup3."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & MASK
    i = 0
    while n - i > 12:
        x, y, z = struct.unpack_from("<III", data, i)
        a, b, c = (a + x) & MASK, (b + y) & MASK, (c + z) & MASK
        a = (a - c) & MASK; a ^= _rot(c, 4); c = (c + b) & MASK  # noqa: E702
        b = (b - a) & MASK; b ^= _rot(a, 6); a = (a + c) & MASK  # noqa: E702
        c = (c - b) & MASK; c ^= _rot(b, 8); b = (b + a) & MASK  # noqa: E702
        a = (a - c) & MASK; a ^= _rot(c, 16); c = (c + b) & MASK  # noqa: E702
        b = (b - a) & MASK; b ^= _rot(a, 19); a = (a + c) & MASK  # noqa: E702
        c = (c - b) & MASK; c ^= _rot(b, 4); b = (b + a) & MASK  # noqa: E702
        i += 12
    if n - i == 0:
        return c
    tail = bytes(data[i:]) + bytes(12 - (n - i))
    x, y, z = struct.unpack("<III", tail)
    a, b, c = (a + x) & MASK, (b + y) & MASK, (c + z) & MASK
    c ^= b; c = (c - _rot(b, 14)) & MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & MASK  # noqa: E702
    return c


@dataclass(frozen=True)
class Chunk:
    start: int  # first byte of the signature
    cks: int  # position of the 4-byte checksum (covers start..cks)


@dataclass(frozen=True)
class AttrMsg:
    name: str
    msg: int  # first byte of the attribute message body (its version byte)
    msg_size: int
    dtype: int  # datatype message: class/version byte, 3 bytes of class bits, uint32 size, properties
    dtype_size: int
    space: int  # dataspace message v2: version, rank, flags, type, dims (8 bytes each)
    space_size: int
    data: int
    data_size: int
    dt_class: int
    elem_size: int  # the datatype's size field
    vlen_string: bool
    rank: int
    dims: tuple
    chunk: Chunk
    owner: int  # address of the object header ("OHDR") the message belongs to

    def descriptors(self) -> list[int]:
        """Positions of the 16-byte vlen descriptors of a variable-length string attribute (one per element)."""
        if not self.vlen_string or self.elem_size != 16:
            return []
        return list(range(self.data, self.data + self.data_size - 15, 16))


def fix_checksum(raw: bytearray, chunk: Chunk) -> None:
    raw[chunk.cks : chunk.cks + 4] = lookup3(bytes(raw[chunk.start : chunk.cks])).to_bytes(4, "little")


def _checksum_ok(raw, start: int, cks: int) -> bool:
    return 0 <= start < cks <= len(raw) - 4 and lookup3(bytes(raw[start:cks])) == int.from_bytes(raw[cks : cks + 4], "little")


def object_header_chunks(raw) -> list[tuple[Chunk, int, int, bool, int]]:
    """Every checksummed object header chunk: (chunk, first message byte, end of messages, creation order,
    address of its object header)."""
    out, seen = [], set()
    todo = []
    p = raw.find(b"OHDR")
    while p >= 0:
        if p + 6 <= len(raw) and raw[p + 4] == 2:
            flags = raw[p + 5]
            q = p + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            w = 1 << (flags & 3)
            if q + w <= len(raw):
                size = int.from_bytes(raw[q : q + w], "little")
                first, end = q + w, q + w + size
                if _checksum_ok(raw, p, end):
                    todo.append((Chunk(p, end), first, end, bool(flags & 0x04), p))
        p = raw.find(b"OHDR", p + 1)
    while todo:
        item = todo.pop()
        if item[0].start in seen:
            continue
        seen.add(item[0].start)
        out.append(item)
        for typ, body, size in _messages(raw, item[1], item[2], item[3]):
            if typ == MSG_CONTINUATION and size >= 16:
                addr, length = struct.unpack_from("<QQ", raw, body)
                if raw[addr : addr + 4] == b"OCHK" and _checksum_ok(raw, addr, addr + length - 4):
                    todo.append((Chunk(addr, addr + length - 4), addr + 4, addr + length - 4, item[3], item[4]))
    return sorted(out, key=lambda t: t[0].start)


def _messages(raw, first: int, end: int, corder: bool):
    hdr = 6 if corder else 4
    q = first
    while q + hdr <= end:
        typ, size = raw[q], int.from_bytes(raw[q + 1 : q + 3], "little")
        body = q + hdr
        if body + size > end:
            return
        yield typ, body, size
        q = body + size


def attribute_messages(raw) -> list[AttrMsg]:
    """The compact (in-header) attribute messages of every object header, in file order."""
    out = []
    for chunk, first, end, corder, owner in object_header_chunks(raw):
        for typ, body, size in _messages(raw, first, end, corder):
            if typ != MSG_ATTRIBUTE or size < 8 or raw[body] != 3:
                continue
            nsize, dsize, ssize = struct.unpack_from("<HHH", raw, body + 2)
            name_at = body + 9
            dtype = name_at + nsize
            space = dtype + dsize
            data = space + ssize
            if data > body + size or nsize == 0 or dsize < 8 or ssize < 4:
                continue
            name = bytes(raw[name_at : name_at + nsize - 1]).decode("utf-8", "replace")
            dt_class = raw[dtype] & 0x0F
            elem = int.from_bytes(raw[dtype + 4 : dtype + 8], "little")
            vstr = dt_class == DT_VLEN and (raw[dtype + 1] & 0x0F) == 1
            rank = raw[space + 1]
            dims = tuple(struct.unpack_from(f"<{rank}Q", raw, space + 4)) if ssize >= 4 + 8 * rank else ()
            out.append(AttrMsg(name, body, size, dtype, dsize, space, ssize, data, body + size - data, dt_class,
                               elem, vstr, rank, dims, chunk, owner))
    return out


def heap_object(raw, collection: int, index: int) -> tuple[int, int] | None:
    """(position of the object's 16-byte header in its GCOL collection, its size) or None."""
    if raw[collection : collection + 4] != b"GCOL":
        return None
    end = collection + int.from_bytes(raw[collection + 8 : collection + 16], "little")
    q = collection + 16
    while q + 16 <= min(end, len(raw)):
        idx, osize = int.from_bytes(raw[q : q + 2], "little"), int.from_bytes(raw[q + 8 : q + 16], "little")
        if idx == index:
            return q, osize
        if idx == 0:
            return None
        q += 16 + ((osize + 7) // 8) * 8
    return None
