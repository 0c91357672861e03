"""Element `probe` [scope.probe]: spatial-mean activations of every unit on the first images (for `scope diff`)."""

from __future__ import annotations

import h5py
import numpy as np

from scopecli.artifact.h5io import check_element, get_dataset, read_numeric, set_encoding, write_array
from scopecli.artifact.registry import LayerElement, MergeInput, MergePlan, register_layer_element, remap_images
from scopecli.core.errors import ScopeError
from scopecli.core.records import ProbeBlock


def read_probe(g: h5py.Group, units: int, n_images: int | None, where: str) -> ProbeBlock:
    check_element(g, ProbeElement.encoding, where, h5py.Group)
    ii = read_numeric(get_dataset(g, "image_index", where), f"{where}/image_index", "i", 1).astype(np.int64)
    acts = read_numeric(get_dataset(g, "acts", where), f"{where}/acts", "f", 2).astype(np.float16)
    if acts.shape != (len(ii), units):
        raise ScopeError(f"{where}/acts: shape {acts.shape}, expected {(len(ii), units)}")
    if len(ii) and ((ii < 0).any() or (ii >= (n_images or 0)).any()):
        raise ScopeError(f"{where}/image_index: index out of range of the image table")
    return ProbeBlock(image_index=ii, acts=acts)


@register_layer_element
class ProbeElement(LayerElement):
    """Staged: {image index: float16 [units] row}; rows of the same image are replaced."""

    name = "probe"
    encoding = "scope.probe"
    features = ("probe",)
    uses_images = True

    def read(self, group, slot):
        return read_probe(group, slot.units, slot.n_images, slot.where + "/probe")

    def present(self, group, slot, section=None):
        return np.ones(slot.units, bool)

    def info(self, group, slot, section=None):
        if group is None:
            return {"probe_images": 0}
        where = slot.where + "/probe"
        check_element(group, self.encoding, where)
        ds = get_dataset(group, "image_index", where)
        return {"probe_images": int(ds.shape[0]) if ds.ndim == 1 else 0}

    def new(self) -> dict:
        return {}

    def stage(self, section: ProbeBlock, slot) -> dict:
        return {int(i): a for i, a in zip(section.image_index, section.acts)}

    def put(self, staged: dict, value: ProbeBlock, slot, **options) -> None:
        ii = np.asarray(value.image_index, np.int64).reshape(-1)
        acts = np.asarray(value.acts)
        if acts.shape != (len(ii), slot.units):
            raise ScopeError(f"probe {slot.name}: acts shape {acts.shape}, expected ({len(ii)}, {slot.units})")
        if len(ii) and (ii < 0).any():
            raise ScopeError(f"probe {slot.name}: image_index must be >= 0")
        for i, a in zip(ii, acts.astype(np.float16)):
            staged[int(i)] = a

    def is_empty(self, staged) -> bool:
        return not staged

    def check_references(self, staged, slot) -> None:
        n = slot.n_images
        if staged and (n is None or max(staged) >= n):
            raise ScopeError(f"probe {slot.name} refers to images beyond the image table ({n or 0} images)")

    def write(self, group, staged: dict, slot) -> None:
        pg = group.create_group(self.name)
        set_encoding(pg, self.encoding, self.version)
        idx = sorted(staged)
        write_array(pg, "present", np.ones(slot.units, np.uint8), np.uint8)
        write_array(pg, "image_index", idx, np.int64)
        write_array(pg, "acts", np.stack([staged[i] for i in idx]).astype(np.float16), np.float16)

    def merge(self, inputs: list[MergeInput], slot, plan: MergePlan) -> dict:
        rows: dict[int, np.ndarray] = {}
        src: dict[int, int] = {}
        for inp in inputs:
            pb = inp.section
            for ii, acts in zip(remap_images(pb.image_index, inp.image_map), pb.acts):
                ii = int(ii)
                if ii in rows and not np.array_equal(rows[ii], acts) and plan.prefer is None:
                    plan.conflict(f"{slot.name} probe image {plan.image_name(ii)} in {plan.names[src[ii]]} and {inp.name}")
                rows[ii], src[ii] = acts, inp.index
        return rows
