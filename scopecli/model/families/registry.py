"""The model-family registry: the types a family is made of, the ordered list, and the spec lookup.

Why only this here: every family module registers itself through this file and the resolver reads it,
so it holds no family's code and imports none (the family modules import it, never the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

from torch import nn

from scopecli.model.loaded import Preprocess


class BuiltModule(NamedTuple):
    """What a family's build returns: the module and the names the artifact records."""

    module: nn.Module
    name: str  # short model name (file names, titles)
    architecture: str
    weights: str  # label of the weights actually loaded (enum name, random:SEED, file:NAME, factory)
    # preprocessing that depends on the weights or the built module (timm's pretrained config, a CLIP
    # tower's image size); None: the family's preprocess(spec)
    preprocess: Preprocess | None = None
    class_names: list[str] | None = None  # the model's output classes by index, where the library says (torchvision)


@dataclass(frozen=True)
class ModelFamily:
    """One source of models.

    claim(spec) -> the spec as this family spells it, or None when the spec is not this family's.
    build(claimed spec, weights) -> BuiltModule (weights is never empty: DEFAULT when not given).
    preprocess(claimed spec) -> a fresh Preprocess (the resolver applies --mean/--std/--input-size to it);
        a BuiltModule that carries its own preprocess wins over this.
    rows() -> rows for `scope models`: {name, family, source, weights, available}.
    names() -> the names this family knows, for "did you mean" hints on unknown specs.
    """

    name: str
    claim: Callable[[str], str | None]
    build: Callable[[str, str], BuiltModule]
    preprocess: Callable[[str], Preprocess]
    rows: Callable[[], list[dict]] = lambda: []
    names: Callable[[], list[str]] = lambda: []


FAMILIES: list[ModelFamily] = []


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (after the ones already there)."""
    if any(f.name == family.name for f in FAMILIES):
        raise ValueError(f"model family '{family.name}' is already registered")
    FAMILIES.append(family)
    return family


def family_for(spec: str) -> tuple[ModelFamily, str] | None:
    """The first family that claims `spec`, with the spec as that family spells it."""
    for family in FAMILIES:
        claimed = family.claim(spec)
        if claimed is not None:
            return family, claimed
    return None
