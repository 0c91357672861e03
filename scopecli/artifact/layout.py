"""Names, encodings, limits and checksums of artifact format 1.x, shared by writer, reader and validator.

Everything that both sides must agree on lives here so the two can never drift apart.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote, unquote

import numpy as np

FORMAT_NAME = "scope.artifact"
FORMAT_VERSION = "1.3"
FORMAT_MAJOR = 1
FORMAT_MINOR = 3

# Features a reader must understand; the writer lists the ones a file uses in the root attribute. These
# are the format's own; every registered element adds its own (`registry.known_features`).
FORMAT_FEATURES = frozenset({"layers", "provenance", "dataset", "png", "jpeg", "channels"})
# "channels" (1.2): the model's input is not 8-bit RGB, so pictures are gray, 16-bit or planar (SPEC.md, Storage)
CHANNELS_FEATURE = "channels"


def input_spec_of(model_info: dict | None) -> tuple[int, int]:
    """(channels, bit depth) of an artifact's model input: 1.0/1.1 files and unknown records are (3, 8)."""
    pre = (model_info or {}).get("preprocess") or {}
    try:
        return int(pre.get("channels") or 3), int(pre.get("bit_depth") or 8)
    except (TypeError, ValueError):
        return 3, 8

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Encodings of the file's frame (anndata-style: every group and dataset carries encoding-type and
# encoding-version). Elements (renders, examples, ...) name their own encodings in their modules.
ENC_ROOT = "scope.artifact"
ENC_DICT = "scope.dict"
ENC_SPEC = "scope.spec"
ENC_MODEL = "scope.model"
ENC_PROVENANCE = "scope.provenance"
ENC_LAYERS = "scope.layers"
ENC_LAYER = "scope.layer"
ENC_ARRAY = "array"
ENC_STRINGS = "string-array"
ENC_STRING = "string"
ENC_BYTES = "bytes"
ENCODING_VERSION = "1.0"

# Encoded images allowed inside an artifact, by magic bytes.
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"

# Sanity bounds on declared sizes, so a hostile file cannot make a reader allocate the world.
MAX_UNITS = 1 << 20  # units per layer
MAX_IMAGES = 1 << 26  # images in a dataset table
MAX_IMAGE_SIDE = 8192  # pixels, for renders and patches
MAX_FIELD_PX = 1 << 20  # receptive field size, stride and |start| in input pixels
MAX_DATASET_BYTES = 1 << 32  # 4 GiB declared for one dataset (artifacts are at most a few GB)
MAX_STRING_BYTES = 1 << 20  # one string element
MAX_ELEMENTS_PER_DIM = 1 << 34

BLOB_CHUNK = 1 << 16  # bytes per chunk of an image byte array
ARRAY_CHUNK_BYTES = 1 << 18  # target bytes per chunk of a numeric array


def escape_name(name: str) -> str:
    """HDF5 link name for a PyTorch dotted module name ('/' and '%' percent-escaped; '' and '.' too).

    The real name is always kept in the group's `name` attribute; this only makes it storable.
    """
    if name == "":
        return "%"
    if name == ".":
        return "%2E"
    if "/" in name or "%" in name:
        return quote(name, safe="", encoding="utf-8")
    return name


def unescape_name(link: str) -> str:
    """Inverse of `escape_name`."""
    if link == "%":
        return ""
    return unquote(link)


def canonical_bytes_sha256(data) -> str:
    """sha256 hex of a dataset's canonical bytes.

    Numeric arrays: C-order little-endian element bytes. Strings (vlen UTF-8 or fixed ASCII):
    for each element, its UTF-8 byte length as uint64 little-endian, then those bytes.
    Scalars are treated as one-element arrays.
    """
    h = hashlib.sha256()
    arr = np.asarray(data)
    if arr.dtype.kind in ("O", "U", "S"):
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode("utf-8")
            if isinstance(item, np.bytes_):
                b = bytes(item)
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    h.update(np.ascontiguousarray(le).tobytes())
    return h.hexdigest()


def dataset_fingerprint(paths, sha256s) -> str:
    """Fingerprint of an image set: sha256 over 'relative path TAB file sha256 LF' lines in table order."""
    h = hashlib.sha256()
    for p, s in zip(paths, sha256s):
        h.update(p.encode("utf-8"))
        h.update(b"\t")
        h.update(s.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()
