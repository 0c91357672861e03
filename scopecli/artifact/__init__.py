"""The scope artifact: one versioned HDF5 file holding renders, dataset examples, statistics and probes.

Stable API (external scripts depend on it):

    from scopecli.artifact import ArtifactWriter, open_artifact

    with ArtifactWriter("resnet.h5", loaded.info(), "render", {"steps": 512}) as w:
        w.ensure_layer(layer_record)
        w.put_renders("layer4.2", [render_record, ...])      # or w.put("layer4.2", "renders", [...])

    with open_artifact("resnet.h5") as art:
        u = art.unit("layer4.2:117")
        u.renders[0].image, u.examples["top"][0].patch, u.stats["mean"]
        art.section("layer4.2", "stats")                      # any element, as its module reads it

What is stored is a set of registered elements (`registry.py`, one module each under `elements/`); the
format is specified in `schema/SPEC.md` (embedded in every file) and `schema/artifact-1.0.json`.
"""

from scopecli.artifact.layout import FORMAT_NAME, FORMAT_VERSION, dataset_fingerprint
from scopecli.artifact.reader import Artifact, Example, LazyPatches, RenderView, UnitView, open_artifact
from scopecli.artifact.registry import LayerElement, LayerSlot, MergeInput, MergePlan, register_layer_element, registered
from scopecli.artifact.writer import ArtifactWriter

# the built-in elements and file formats register themselves on import (registration order = storage order)
from scopecli.artifact import elements, formats  # noqa: E402,F401  isort: skip

__all__ = [
    "Artifact",
    "ArtifactWriter",
    "Example",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LayerElement",
    "LayerSlot",
    "LazyPatches",
    "MergeInput",
    "MergePlan",
    "RenderView",
    "UnitView",
    "dataset_fingerprint",
    "open_artifact",
    "register_layer_element",
    "registered",
]
