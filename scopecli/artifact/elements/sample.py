"""Element `sample` [scope.activation-sample] (format 1.1): a seeded uniform sample of a layer's position vectors.

Why: unit spaces (`scope decompose`: PCA, NMF, sparse autoencoders) are fitted on activation vectors; with
the sample in the artifact anyone can fit one later without the images or the model. Rows are the
`size` smallest sample keys (uint64, from seed, image path and position: `scopecli.core.sketch.position_keys`),
so shards merge exactly: the merged sample is the `size` smallest keys of the inputs' union.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from scopecli.artifact.h5io import attr_int, check_element, get_dataset, read_numeric, set_encoding, write_array
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element, remap_images
from scopecli.core.errors import ScopeError
from scopecli.core.records import ActivationSample
from scopecli.core.sketch import smallest_keys

MAX_SAMPLE_ROWS = 1 << 26


def read_sample(g, slot) -> ActivationSample:
    where = slot.where + "/sample"
    check_element(g, SampleElement.encoding, where)
    keys = read_numeric(get_dataset(g, "keys", where), f"{where}/keys", "u", 1)
    if keys.dtype.itemsize != 8:
        raise ScopeError(f"{where}/keys: expected uint64, found {keys.dtype}")
    keys = keys.astype(np.uint64)
    vec = read_numeric(get_dataset(g, "vectors", where), f"{where}/vectors", "f", 2).astype(np.float16)
    ii = read_numeric(get_dataset(g, "image_index", where), f"{where}/image_index", "i", 1).astype(np.int64)
    pos = read_numeric(get_dataset(g, "positions", where), f"{where}/positions", "i", 2).astype(np.int32)
    n = len(keys)
    if vec.shape != (n, slot.units) or ii.shape != (n,) or pos.shape != (n, 2):
        raise ScopeError(f"{where}: keys, vectors [{n}, {slot.units}], image_index and positions disagree in shape")
    if n > 1 and (keys[1:] < keys[:-1]).any():
        raise ScopeError(f"{where}/keys: not in ascending order")
    hi = slot.n_images or 0
    if n and ((ii < 0) | (ii >= hi)).any():
        raise ScopeError(f"{where}/image_index: index out of range of the image table ({hi} images)")
    size = attr_int(g, "size", where, 0, MAX_SAMPLE_ROWS)
    if n > size:
        raise ScopeError(f"{where}: holds {n} rows, more than its size {size}")
    return ActivationSample(keys=keys, vectors16=vec, image_index=ii, positions=pos, seed=attr_int(g, "seed", where),
                            size=size, population=attr_int(g, "population", where, 0))


@register_layer_element
class SampleElement(LayerElement):
    """Staged: one ActivationSample (a collect run or a merge writes it whole)."""

    name = "sample"
    encoding = "scope.activation-sample"
    features = ()  # a 1.0 reader that ignores it reads everything else correctly
    uses_images = True

    def read(self, group, slot) -> ActivationSample:
        return read_sample(group, slot)

    def present(self, group, slot, section=None):
        return np.ones(slot.units, bool)

    def info(self, group, slot, section=None) -> dict:
        if group is None:
            return {}
        where = slot.where + "/sample"
        check_element(group, self.encoding, where)
        ds = get_dataset(group, "keys", where)
        return {"sample": int(ds.shape[0]) if ds.ndim == 1 else 0}

    # -- write: staged = a holder of one ActivationSample (a collect run or a merge writes it whole)
    def new(self) -> "SampleStage":
        return SampleStage()

    def stage(self, section: ActivationSample, slot) -> "SampleStage":
        return SampleStage(section)

    def put(self, staged: "SampleStage", value: ActivationSample, slot, **options) -> None:
        keys = np.asarray(value.keys, np.uint64).reshape(-1)
        n = len(keys)
        vec = np.asarray(value.vectors16, np.float16)
        if vec.shape != (n, slot.units) or np.asarray(value.image_index).shape != (n,) \
                or np.asarray(value.positions).reshape(-1, 2).shape != (n, 2):
            raise ScopeError(f"activation sample of {slot.name}: keys, vectors [{n}, {slot.units}], image_index and "
                             "positions disagree in shape")
        if n > int(value.size) or (n > 1 and (keys[1:] < keys[:-1]).any()):
            raise ScopeError(f"activation sample of {slot.name}: more rows than its size, or keys not ascending")
        staged.sample = value

    def is_empty(self, staged: "SampleStage") -> bool:
        return staged.sample is None

    def check_references(self, staged: "SampleStage", slot) -> None:
        staged = staged.sample
        if staged is None:
            return
        n = len(staged)
        if staged.vectors16.shape != (n, slot.units):
            raise ScopeError(f"activation sample of {slot.name}: vectors {staged.vectors16.shape}, expected ({n}, {slot.units})")
        if n and (staged.image_index.min() < 0 or staged.image_index.max() >= (slot.n_images or 0)):
            raise ScopeError(f"activation sample of {slot.name} refers to images beyond the image table "
                             f"({slot.n_images or 0} images)")

    def write(self, group, staged: "SampleStage", slot) -> None:
        staged = staged.sample
        g = group.create_group(self.name)
        set_encoding(g, self.encoding, self.version)
        g.attrs["seed"] = np.int64(staged.seed)
        g.attrs["size"] = np.int64(staged.size)
        g.attrs["population"] = np.int64(staged.population)
        write_array(g, "keys", staged.keys, np.uint64)
        write_array(g, "vectors", staged.vectors16, np.float16)
        write_array(g, "image_index", staged.image_index, np.int64)
        write_array(g, "positions", np.asarray(staged.positions).reshape(-1, 2), np.int32)

    def check(self, section: ActivationSample, slot, art, quick):
        problems = []
        if len(section) and not np.isfinite(section.vectors16).all():
            problems.append(f"layer {slot.name}: activation sample holds non-finite values")
        lay = art.layer(slot.name).effective_layout
        pos = section.positions
        if len(section) and ((pos < 0).any() or (pos[:, 0] >= lay.grid[0]).any() or (pos[:, 1] >= lay.grid[1]).any()):
            problems.append(f"layer {slot.name}: activation sample positions outside the {lay.grid} grid")
        return problems, set()

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> "SampleStage":
        """The `size` smallest keys of the union: exact for shards (disjoint images). Inputs over the same
        images must hold the same rows for them, unless prefer=last; seeds and sizes must agree."""
        first = inputs[0].section
        for inp in inputs[1:]:
            if (inp.section.seed, inp.section.size) != (first.seed, first.size):
                if plan.prefer == "last":  # samples of other seeds do not mix: keep the last input's whole
                    last = inputs[-1]
                    return SampleStage(dataclasses.replace(last.section, image_index=remap_images(
                        last.section.image_index, last.image_map)))
                plan.conflict(f"{slot.name} activation samples in {plan.names[inputs[0].index]} and {inp.name} have "
                              f"another seed or size ({first.seed}/{first.size} vs {inp.section.seed}/{inp.section.size})")
                return SampleStage(first)
        rows: dict[tuple[int, int, int], tuple[int, np.ndarray]] = {}  # (image, row, col) -> (key, vector)
        population = 0
        for j, inp in enumerate(inputs):
            sec = inp.section
            overlap = not all(plan.disjoint(o.index, inp.index) for o in inputs[:j])
            if not overlap:
                population += sec.population
            for key, img, (r, c), vec in zip(sec.keys, remap_images(sec.image_index, inp.image_map), sec.positions,
                                             sec.vectors16):
                at = (int(img), int(r), int(c))
                old = rows.get(at)
                if old is not None and not np.array_equal(old[1], vec) and plan.prefer is None:
                    plan.conflict(f"{slot.name} activation sample of {plan.image_name(at[0])} in {inp.name} and "
                                  "an input over the same images differ")
                rows[at] = (int(key), vec)
        at = list(rows)
        keys = np.array([rows[a][0] for a in at], np.uint64)
        image = np.array([a[0] for a in at], np.int64)
        flat = np.array([a[1] * (1 << 20) + a[2] for a in at], np.int64)
        keep = smallest_keys(keys, image, flat, first.size)
        vec = np.stack([rows[at[i]][1] for i in keep]) if len(keep) else np.zeros((0, slot.units), np.float16)
        pos = np.array([[at[i][1], at[i][2]] for i in keep], np.int32).reshape(-1, 2)
        return SampleStage(ActivationSample(keys=keys[keep], vectors16=vec.astype(np.float16), image_index=image[keep],
                                            positions=pos, seed=first.seed, size=first.size, population=population))


@dataclass
class SampleStage:
    sample: ActivationSample | None = None
