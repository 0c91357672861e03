"""Element `caricatures` [scope.caricatures] (format 1.1): photos re-optimized so that a layer's response
to them is exaggerated (Microscope's caricatures), written by `scope caricature`.

One row per photo (keyed by the photo's sha256): the caricature (PNG), the photo as the model saw it
(its centre crop, JPEG, for side-by-side display), the objective settings, and the evidence: the cosine
between the caricature's activation and the photo's at this layer, and the ratio of their magnitudes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h5py
import numpy as np

from scopecli.artifact.blobs import blob_reader, check_blob, check_sizes, check_spans, pack_offsets
from scopecli.artifact.h5io import (check_element, get_dataset, read_numeric, read_strings, set_encoding, write_array,
    write_blob, write_strings)
from scopecli.artifact.display import DisplaySpec, composite
from scopecli.artifact.images import decode_image, encode_jpeg, encode_png, jpeg_ok
from scopecli.artifact.registry import LayerElement, LayerSlot, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import Caricature

PHOTO_QUALITY = 90
INT_COLS = (("height", np.int32), ("width", np.int32), ("steps", np.int32), ("size", np.int32), ("seed", np.int64))
FLOAT_COLS = (("lr", np.float64), ("power", np.float64), ("cosine", np.float64), ("magnitude_ratio", np.float64),
              ("time_s", np.float64))
STR_COLS = ("source_sha256", "source_name", "param")


@dataclass
class CaricatureRow:
    """The stored columns of one caricature row (STR_COLS, INT_COLS, FLOAT_COLS): what the writer's copy
    and the reader's view both carry besides the images, so the two cannot drift apart."""

    source_sha256: str
    source_name: str
    param: str
    height: int
    width: int
    steps: int
    size: int
    seed: int
    lr: float
    power: float
    cosine: float
    magnitude_ratio: float
    time_s: float


@dataclass
class StoredCaricature(CaricatureRow):
    """A caricature as the writer holds it: metadata and encoded bytes (never re-encoded)."""

    png: bytes
    photo_jpeg: bytes


@dataclass
class CaricatureView(CaricatureRow):
    """One stored caricature: `.image` (the caricature) and `.photo` decode on first access."""

    layer: str
    _load: object = field(repr=False, default=None)
    _load_photo: object = field(repr=False, default=None)
    _image: np.ndarray | None = field(repr=False, default=None)
    _photo: np.ndarray | None = field(repr=False, default=None)

    @property
    def encoded(self) -> bytes:
        return self._load()

    @property
    def photo_encoded(self) -> bytes:
        return self._load_photo()

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = decode_image(self.encoded, self.height, self.width,
                                       f"caricature of {self.source_name} at {self.layer}")
        return self._image

    @property
    def photo(self) -> np.ndarray:
        if self._photo is None:
            self._photo = decode_image(self.photo_encoded, self.height, self.width, f"photo {self.source_name}")
        return self._photo

    def _repr_png_(self) -> bytes:
        """Jupyter: the photo and its caricature side by side, as a screen shows them."""
        photo, image = self.photo, self.image
        spec = DisplaySpec(channels=image.shape[2])
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        return encode_png(np.concatenate([composite(photo, spec), gap, composite(image, spec)], axis=1), "caricature")


class CaricatureSection:
    def __init__(self, g: h5py.Group, slot: LayerSlot):
        where = slot.where + "/caricatures"
        check_element(g, CaricaturesElement.encoding, where, h5py.Group)
        self.layer, self.where = slot.name, where
        cols = {}
        for name in ("offset", "length", "photo_offset", "photo_length") + tuple(c for c, _ in INT_COLS):
            cols[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", "i", 1).astype(np.int64)
        for name, _ in FLOAT_COLS:
            cols[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", "f", 1).astype(np.float64)
        for name in STR_COLS:
            cols[name] = read_strings(get_dataset(g, name, where), f"{where}/{name}")
        n = len(cols["offset"])
        for k, v in cols.items():
            if len(v) != n:
                raise ScopeError(f"{where}/{k}: has {len(v)} rows, expected {n}")
        if len(set(cols["source_sha256"])) != n:
            raise ScopeError(f"{where}/source_sha256: a photo appears twice")
        self.blob = get_dataset(g, "blob", where)
        check_blob(self.blob, where)
        check_spans(cols["offset"], cols["length"], self.blob.shape[0], where, allow_empty=False)
        check_spans(cols["photo_offset"], cols["photo_length"], self.blob.shape[0], where, allow_empty=False)
        check_sizes(cols["height"], cols["width"], where)
        self.cols, self.n = cols, n
        self._read = blob_reader(self.blob, where)

    def _meta(self, i: int) -> dict:
        c = self.cols
        out = {name: str(c[name][i]) for name in STR_COLS}
        out.update({name: int(c[name][i]) for name, _ in INT_COLS})
        out.update({name: float(c[name][i]) for name, _ in FLOAT_COLS})
        return out

    def _spans(self, i: int) -> tuple[int, int, int, int]:
        """(offset, length) of row i's caricature PNG, then of its photo JPEG, in the blob."""
        return tuple(int(self.cols[k][i]) for k in ("offset", "length", "photo_offset", "photo_length"))

    def view(self, i: int) -> CaricatureView:
        off, ln, poff, pln = self._spans(i)
        return CaricatureView(layer=self.layer, _load=lambda: self._read(off, ln),
                              _load_photo=lambda: self._read(poff, pln), **self._meta(i))

    def stored(self) -> dict[str, StoredCaricature]:
        blob = self.blob[()].tobytes() if self.blob.shape[0] else b""
        out = {}
        for i in range(self.n):
            off, ln, poff, pln = self._spans(i)
            s = StoredCaricature(png=blob[off:off + ln], photo_jpeg=blob[poff:poff + pln], **self._meta(i))
            out[s.source_sha256] = s
        return out


@register_layer_element
class CaricaturesElement(LayerElement):
    name = "caricatures"
    encoding = "scope.caricatures"
    features = ()  # optional: a reader that ignores it reads everything else correctly

    def read(self, group, slot):
        return CaricatureSection(group, slot)

    def info(self, group, slot, section=None):
        return {} if group is None else {"caricatures": (section or self.read(group, slot)).n}

    # -- write: staged = {photo sha256: StoredCaricature}
    def new(self) -> dict:
        return {}

    def stage(self, section: CaricatureSection, slot) -> dict:
        return section.stored()

    def put(self, staged: dict, value: list[Caricature], slot, **options) -> None:
        for c in value:
            img, photo = np.asarray(c.image), np.asarray(c.photo)
            if img.shape != photo.shape:
                raise ScopeError(f"caricature of {c.source_name} at {slot.name}: image and photo differ in size")
            if not (isinstance(c.source_sha256, str) and len(c.source_sha256) == 64):
                raise ScopeError(f"caricature of {c.source_name} at {slot.name}: source_sha256 must be a hex sha256")
            staged[c.source_sha256] = StoredCaricature(
                source_sha256=c.source_sha256, source_name=str(c.source_name), param=str(c.param),
                png=encode_png(img, f"caricature {slot.name}"), photo_jpeg=encode_jpeg(photo, PHOTO_QUALITY, "photo") if jpeg_ok(photo) else encode_png(photo, "photo"),
                height=img.shape[0], width=img.shape[1], steps=int(c.steps), size=int(c.size), seed=int(c.seed),
                lr=float(c.lr), power=float(c.power), cosine=float(c.cosine),
                magnitude_ratio=float(c.magnitude_ratio), time_s=float(c.time_s))

    def is_empty(self, staged) -> bool:
        return not staged

    def write(self, group, staged: dict, slot) -> None:
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        rows = sorted(staged.values(), key=lambda r: (r.source_name, r.source_sha256))
        parts, lengths = [], []
        for r in rows:
            parts += [r.png, r.photo_jpeg]
            lengths += [len(r.png), len(r.photo_jpeg)]
        offsets, lengths = pack_offsets(lengths)
        write_array(g, "offset", offsets[0::2], np.int64)
        write_array(g, "length", lengths[0::2], np.int64)
        write_array(g, "photo_offset", offsets[1::2], np.int64)
        write_array(g, "photo_length", lengths[1::2], np.int64)
        for name, dt in INT_COLS + FLOAT_COLS:
            write_array(g, name, [getattr(r, name) for r in rows], dt)
        for name in STR_COLS:
            write_strings(g, name, [getattr(r, name) for r in rows])
        write_blob(g, "blob", b"".join(parts))

    def check(self, section: CaricatureSection, slot, art, quick):
        problems = []
        c = section.cols
        bad = [i for i in range(section.n) if not (-1.0001 <= c["cosine"][i] <= 1.0001 and c["magnitude_ratio"][i] >= 0)]
        for i in bad:
            problems.append(f"layer {slot.name}: caricature row {i} has an impossible cosine or magnitude ratio")
        if not quick:
            for i in range(section.n):
                v = section.view(i)
                for what, data in (("caricature", v.encoded), ("photo", v.photo_encoded)):
                    try:
                        decode_image(data, v.height, v.width, f"layer {slot.name} {what} row {i}")
                    except ScopeError as exc:
                        problems.append(str(exc))
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> dict:
        """Union by photo; the same photo with another caricature is a conflict (unless prefer=last)."""
        out: dict = {}
        src: dict = {}
        for inp in inputs:
            for key, row in inp.section.stored().items():
                if key in out and out[key].png != row.png and plan.prefer is None:
                    plan.conflict(f"{slot.name} caricature of {row.source_name} in {plan.names[src[key]]} and {inp.name}")
                out[key], src[key] = row, inp.index
        return out
