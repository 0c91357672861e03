"""Element `atlas` [scope.activation-atlas] (format 1.1): a layer's activation atlas, written by `scope atlas`.

The layer's activation sample (`collect --sample N`) laid out in 2-D (UMAP, or PCA when umap-learn is not
installed), cut into a grid x grid grid; each non-empty cell keeps its position, how many sample vectors
fell in it, their mean vector, and a feature visualization of that direction (PNG) with the evidence:
the direction's score on the image at the start and at the end of the optimization.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import h5py
import numpy as np

from scopecli.artifact.blobs import blob_reader, check_blob, check_sizes, check_spans, pack_offsets
from scopecli.artifact.h5io import (attr_float, attr_int, attr_str, check_element, get_dataset, read_numeric,
    set_encoding, write_array, write_blob)
from scopecli.artifact.display import DisplaySpec, composite
from scopecli.artifact.images import decode_image, encode_png
from scopecli.artifact.registry import LayerElement, LayerSlot, MergeInput, MergePlan, register_layer_element
from scopecli.core.errors import ScopeError
from scopecli.core.records import AtlasBlock

MAX_GRID = 256
ATTRS = (("grid", int), ("layout", str), ("layout_note", str), ("seed", int), ("vectors", int), ("steps", int),
         ("size", int), ("power", float), ("param", str), ("lr", float))


@dataclass
class AtlasCell:
    """One non-empty cell: `.position` (row, col) in the grid, `.count`, `.center` (layout coordinates),
    `.mean` (the direction), `.act_start` / `.act_final`, and `.image` decoded on first access."""

    position: tuple[int, int]
    count: int
    center: tuple[float, float]
    mean: np.ndarray
    act_start: float
    act_final: float
    height: int
    width: int
    _load: object = field(repr=False, default=None)
    _image: np.ndarray | None = field(repr=False, default=None)

    @property
    def encoded(self) -> bytes:
        return self._load()

    @property
    def image(self) -> np.ndarray:
        if self._image is None:
            self._image = decode_image(self.encoded, self.height, self.width, f"atlas cell {self.position}")
        return self._image

    def nearest_units(self, k: int = 3) -> list[int]:
        """The units whose axes are closest (by cosine) to the cell's direction: its largest components."""
        return [int(u) for u in np.argsort(-self.mean, kind="stable")[:k]]


class AtlasView:
    """A layer's activation atlas: `.grid`, `.layout`, `.seed`, `.cells` (AtlasCell, by position)."""

    def __init__(self, layer: str, block: AtlasBlock, read):
        self.layer, self.block = layer, block
        for name, _ in ATTRS:
            setattr(self, name, getattr(block, name))
        self.cells = [AtlasCell((int(r), int(c)), int(n), (float(y), float(x)), block.mean[i], float(block.act_start[i]),
                                float(block.act_final[i]), int(block.heights[i]), int(block.widths[i]),
                                _load=lambda i=i: read(i))
                      for i, ((r, c), n, (y, x)) in enumerate(zip(block.cell, block.count, block.center))]

    def summary(self) -> dict:
        return {"grid": self.grid, "layout": self.layout, "layout_note": self.layout_note, "seed": self.seed,
                "vectors": self.vectors, "cells": len(self.cells), "steps": self.steps, "size": self.size,
                "power": self.power}

    def mosaic(self, cell_px: int) -> "Image.Image":  # noqa: F821
        """The whole atlas as one picture: each rendered cell at its place, empty cells dark."""
        from PIL import Image

        img = Image.new("RGB", (self.grid * cell_px, self.grid * cell_px), (24, 24, 28))
        for c in self.cells:
            pixels = c.image
            tile = Image.fromarray(composite(pixels, DisplaySpec(channels=pixels.shape[2]))).resize(
                (cell_px, cell_px), Image.Resampling.LANCZOS)
            img.paste(tile, (c.position[1] * cell_px, c.position[0] * cell_px))
        return img


    def _repr_png_(self) -> bytes:
        """Jupyter: the mosaic (cells of at most 96 px)."""
        buf = io.BytesIO()
        self.mosaic(min(96, max(16, 768 // max(1, self.grid)))).save(buf, format="PNG")
        return buf.getvalue()


class AtlasSection:
    def __init__(self, g: h5py.Group, slot: LayerSlot):
        where = slot.where + "/atlas"
        check_element(g, AtlasElement.encoding, where, h5py.Group)
        self.layer = slot.name
        meta = {}
        for name, kind in ATTRS:
            if kind is int:
                meta[name] = attr_int(g, name, where, 0, 1 << 62)
            elif kind is str:
                meta[name] = attr_str(g, name, where)
            else:
                meta[name] = attr_float(g, name, where)
        if not 1 <= meta["grid"] <= MAX_GRID:
            raise ScopeError(f"{where}: grid {meta['grid']} is outside 1..{MAX_GRID}")
        num = {}
        for name, kind, ndim in (("cell", "i", 2), ("count", "i", 1), ("center", "f", 2), ("mean", "f", 2),
                                 ("act_start", "f", 1), ("act_final", "f", 1), ("offset", "i", 1), ("length", "i", 1),
                                 ("height", "i", 1), ("width", "i", 1)):
            num[name] = read_numeric(get_dataset(g, name, where), f"{where}/{name}", kind, ndim)
        a = len(num["count"])
        if num["cell"].shape != (a, 2) or num["center"].shape != (a, 2) or num["mean"].shape != (a, slot.units) or \
                any(len(num[k]) != a for k in ("act_start", "act_final", "offset", "length", "height", "width")):
            raise ScopeError(f"{where}: cell, count, center, mean [cells, {slot.units}] and the image columns disagree")
        if a and ((num["cell"] < 0).any() or (num["cell"] >= meta["grid"]).any()):
            raise ScopeError(f"{where}/cell: outside the {meta['grid']}x{meta['grid']} grid")
        if a and len({(int(r), int(c)) for r, c in num["cell"]}) != a:
            raise ScopeError(f"{where}/cell: a cell appears twice")
        self.blob = get_dataset(g, "blob", where)
        check_blob(self.blob, where)
        check_spans(num["offset"].astype(np.int64), num["length"].astype(np.int64), self.blob.shape[0], where, False)
        check_sizes(num["height"], num["width"], where)
        self.num = num
        self.block = AtlasBlock(cell=num["cell"].astype(np.int32), count=num["count"].astype(np.int32),
                                center=num["center"].astype(np.float32), mean=num["mean"].astype(np.float32),
                                act_start=num["act_start"].astype(np.float64),
                                act_final=num["act_final"].astype(np.float64),
                                heights=num["height"].astype(np.int32), widths=num["width"].astype(np.int32), **meta)
        self._read = blob_reader(self.blob, where)

    def read_png(self, i: int) -> bytes:
        return self._read(int(self.num["offset"][i]), int(self.num["length"][i]))

    def view(self) -> AtlasView:
        return AtlasView(self.layer, self.block, self.read_png)


@register_layer_element
class AtlasElement(LayerElement):
    name = "atlas"
    encoding = "scope.activation-atlas"
    features = ()  # optional: a reader that ignores it reads everything else correctly

    def read(self, group, slot):
        return AtlasSection(group, slot)

    def info(self, group, slot, section=None):
        if group is None:
            return {}
        sec = section or self.read(group, slot)
        return {"atlas": {"grid": sec.block.grid, "cells": len(sec.block.count), "layout": sec.block.layout}}

    # -- write: staged = one AtlasBlock with encoded PNGs (None: nothing)
    def new(self):
        return _Staged()

    def stage(self, section: AtlasSection, slot):
        b = section.block
        pngs = [section.read_png(i) for i in range(len(b.count))]
        return _Staged(AtlasBlock(**{**b.__dict__, "pngs": pngs, "images": []}))

    def put(self, staged, value: AtlasBlock, slot, **options) -> None:
        a = len(value.count)
        if value.mean.shape != (a, slot.units) or len(value.images) != a:
            raise ScopeError(f"atlas of {slot.name}: mean must be [cells, {slot.units}] with one image per cell")
        if not 1 <= int(value.grid) <= MAX_GRID:
            raise ScopeError(f"atlas of {slot.name}: grid must be 1..{MAX_GRID}")
        pngs = [encode_png(np.asarray(im), f"atlas cell of {slot.name}") for im in value.images]
        staged.block = AtlasBlock(**{**value.__dict__, "pngs": pngs, "images": [],
                                     "heights": np.array([np.asarray(im).shape[0] for im in value.images], np.int32),
                                     "widths": np.array([np.asarray(im).shape[1] for im in value.images], np.int32)})

    def is_empty(self, staged) -> bool:
        return staged.block is None

    def write(self, group, staged, slot) -> None:
        b = staged.block
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        for name, kind in ATTRS:
            v = getattr(b, name)
            g.attrs[name] = np.int64(v) if kind is int else (float(v) if kind is float else str(v))
        order = np.lexsort((np.asarray(b.cell)[:, 1], np.asarray(b.cell)[:, 0])) if len(b.count) else np.zeros(0, int)
        pngs = [b.pngs[i] for i in order]
        offsets, lengths = pack_offsets([len(p) for p in pngs])
        write_array(g, "cell", np.asarray(b.cell)[order].reshape(-1, 2), np.int32)
        write_array(g, "count", np.asarray(b.count)[order], np.int32)
        write_array(g, "center", np.asarray(b.center)[order].reshape(-1, 2), np.float32)
        write_array(g, "mean", np.asarray(b.mean)[order].reshape(-1, slot.units), np.float32)
        write_array(g, "act_start", np.asarray(b.act_start)[order], np.float64)
        write_array(g, "act_final", np.asarray(b.act_final)[order], np.float64)
        write_array(g, "offset", offsets, np.int64)
        write_array(g, "length", lengths, np.int64)
        write_array(g, "height", np.asarray(b.heights)[order], np.int32)
        write_array(g, "width", np.asarray(b.widths)[order], np.int32)
        write_blob(g, "blob", b"".join(pngs))

    def check(self, section: AtlasSection, slot, art, quick):
        problems = []
        b = section.block
        if (b.count < 1).any():
            problems.append(f"layer {slot.name}: an atlas cell holds no sample vector")
        if int(b.count.sum()) > b.vectors:
            problems.append(f"layer {slot.name}: atlas cells hold more vectors ({int(b.count.sum())}) than were laid "
                            f"out ({b.vectors})")
        if not quick:
            for i in range(len(b.count)):
                try:
                    decode_image(section.read_png(i), int(b.heights[i]), int(b.widths[i]),
                                 f"layer {slot.name} atlas cell row {i}")
                except ScopeError as exc:
                    problems.append(str(exc))
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan):
        """One atlas per layer: inputs with different atlases conflict (unless prefer=last)."""
        out = None
        for inp in inputs:
            staged = self.stage(inp.section, slot)
            if out is not None and plan.prefer is None and not _same(out.block, staged.block):
                plan.conflict(f"{slot.name} activation atlas in two inputs")
            out = staged
        return out


def _same(a: AtlasBlock, b: AtlasBlock) -> bool:
    return a.pngs == b.pngs and np.array_equal(a.cell, b.cell) and np.array_equal(a.mean, b.mean)


@dataclass
class _Staged:
    block: AtlasBlock | None = None
