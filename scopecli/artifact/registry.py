"""The element registry: every kind of stored thing says, in one module, how it is read, written,
validated and merged.

Why (anndata's idea, applied to scope): the reader, the writer, `scope validate` and `scope pack` must
agree on every element, and new elements (layouts, heatmaps, unit spaces, caricatures, circuits) keep
coming. Each one is a subclass of `LayerElement` registered under its child name and
`(encoding-type, encoding-version)`; the four consumers loop over the registry, so adding an element
is one module (plus its entry in `schema/`, or an inline `schema` node for elements defined elsewhere,
e.g. in a test).

This module holds only the registry's state and its API; it imports none of its registrants. The
built-in elements and file formats register when `scopecli.artifact` is imported (its `__init__`), which
every import of an artifact module does first, so lookups never see an empty registry.

A layer element lives in the group `/layers/<layer>/<name>`. Its life cycle:
    read      group -> section (index tables parsed and checked; image bytes stay on disk)
    stage     section -> staged (what the writer holds: encoded, never re-decoded), `put` adds to it
    write     staged -> group (compact, on commit)
    check     section -> problems (rules the schema walk cannot express; images decoded unless quick)
    merge     sections of several inputs -> staged (`scope pack`), with conflicts listed
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from scopecli.core.errors import ScopeError


@dataclass
class LayerSlot:
    """What an element knows about the layer it belongs to while reading, writing or checking it."""

    name: str  # the real layer name
    units: int
    where: str  # HDF5 path of the layer group, for messages
    n_images: int | None  # rows of the file's image table (None: no table)
    record: Any = None  # the LayerRecord


@dataclass
class MergeInput:
    """One input's section of a layer during `scope pack`."""

    index: int  # position among the inputs
    name: str  # file name, for conflict messages
    section: Any
    image_map: np.ndarray | None  # old image index -> merged table row (None: the input has no table)


@dataclass
class MergePlan:
    """What every element's merge needs to know about the inputs as a whole."""

    names: list[str]
    image_sets: list[set[str]]  # the image paths of each input
    prefer: str | None  # None: conflicts are errors; "last": the later input wins
    image_paths: list[str] = field(default_factory=list)  # the merged image table, for messages
    image_groups: np.ndarray | None = None  # source group of every merged image row (per-source limits)
    conflicts: list[str] = field(default_factory=list)

    def disjoint(self, i: int, j: int) -> bool:
        """True when inputs i and j saw no image in common (collect shards): their content merges exactly."""
        return not (self.image_sets[i] & self.image_sets[j])

    def conflict(self, message: str) -> None:
        self.conflicts.append(message)

    def image_name(self, row: int) -> str:
        return self.image_paths[row] if 0 <= row < len(self.image_paths) else f"#{row}"


def remap_images(image_index: np.ndarray, image_map: np.ndarray | None) -> np.ndarray:
    """Image indices of one input -> rows of the merged image table (-1 stays -1)."""
    out = np.full_like(np.asarray(image_index), -1)
    ok = image_index >= 0
    if ok.any():
        if image_map is None:
            raise ScopeError("an input holds examples or probes but no image table; it is not a valid artifact")
        out[ok] = image_map[image_index[ok]]
    return out


class LayerElement:
    """Base of per-layer elements. Subclasses set the class attributes and implement the methods.

    Staged content must be a plain object the element alone interprets; the writer only stores it,
    asks `is_empty`, and hands it back to `write`.
    """

    name: ClassVar[str]  # child group name under /layers/<layer>
    encoding: ClassVar[str]  # encoding-type of that group
    version: ClassVar[str] = "1.0"  # encoding-version written; any 1.x is read
    since: ClassVar[str] = "1.1"  # the format version that introduced it (frozen fixtures hold those up to theirs)
    features: ClassVar[tuple[str, ...]] = ()  # required_features tokens a file using it lists
    unit_field: ClassVar[str | None] = None  # attribute of UnitView this element fills (None: none)
    uses_images: ClassVar[bool] = False  # refers to rows of the image table (collected content)
    schema: ClassVar[dict | None] = None  # inline schema node; None: described by schema/artifact-*.json
    panel: ClassVar[str | None] = None  # its section of a unit page: export/templates/panels/<panel>.html

    def panel_context(self, value, links) -> dict | None:
        """What the element's panel shows of one unit's `unit_field` value, as template variables (None: the
        panel is left out). `links.unit(layer, unit)` -> (page url, thumbnail src, width, height) of a unit the
        gallery shows, or None. Why here: a new element is shown by declaring its panel, not by editing the
        gallery's builder."""
        return {"value": value} if value else None

    # ------------------------------------------------------------------------------------------ read
    def read(self, group, slot: LayerSlot):
        """Parse the element's group into a section object (small index tables only)."""
        raise NotImplementedError

    def present(self, group, slot: LayerSlot, section=None) -> np.ndarray:
        """bool [units]: units that have content (cheap: need not parse the whole section)."""
        return np.zeros(slot.units, bool)

    def info(self, group, slot: LayerSlot, section=None) -> dict:
        """Fields this element adds to a layer of `Artifact.info()` (group None: element absent)."""
        return {}

    def unit_value(self, section, unit: int, slot: LayerSlot, art):
        """The value of `UnitView.<unit_field>` for one unit (section None: element absent)."""
        return None

    def features_in(self, group) -> set[str]:
        """required_features tokens of a written group (default: `features`)."""
        return set(self.features)

    # ------------------------------------------------------------------------------------------ write
    def new(self):
        """Empty staged content."""
        raise NotImplementedError

    def stage(self, section, slot: LayerSlot):
        """Staged content holding everything a stored section holds (kept encoded)."""
        raise NotImplementedError

    def put(self, staged, value, slot: LayerSlot, **options) -> None:
        """Add `value` (the element's in-memory record) to staged content, replacing what it supersedes."""
        raise NotImplementedError

    def is_empty(self, staged) -> bool:
        raise NotImplementedError

    def write(self, group, staged, slot: LayerSlot) -> None:
        """Create the child group `name` under the layer group and store the staged content in it."""
        raise NotImplementedError

    def check_references(self, staged, slot: LayerSlot) -> None:
        """Refuse staged content that points past the image table (slot.n_images) before a commit."""

    # ------------------------------------------------------------------------------------------ validate
    def check(self, section, slot: LayerSlot, art, quick: bool) -> tuple[list[str], set[str]]:
        """(problems, features actually used) for a parsed section; decode images unless quick."""
        return [], set(self.features)

    # ------------------------------------------------------------------------------------------ merge
    def merge(self, inputs: list[MergeInput], slot: LayerSlot, plan: MergePlan):
        """Staged content merging the inputs' sections (in input order); conflicts go to `plan`."""
        raise NotImplementedError


_LAYER_ELEMENTS: dict[str, LayerElement] = {}


def register_layer_element(cls):
    """Class decorator: register a LayerElement subclass (one instance) under its child name."""
    el = cls()
    for attr in ("name", "encoding"):
        if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
            raise TypeError(f"{cls.__name__}.{attr} must be a non-empty string")
    old = _LAYER_ELEMENTS.get(el.name)
    if old is not None and type(old) is not cls:
        raise ValueError(f"a layer element named {el.name!r} is already registered ({type(old).__name__})")
    _LAYER_ELEMENTS[el.name] = el
    return cls


def unregister_layer_element(name: str) -> None:
    _LAYER_ELEMENTS.pop(name, None)


@contextmanager
def registered(*classes) -> Iterator[None]:
    """Register elements for the duration of a block (tests, plugins tried out)."""
    names = []
    try:
        for cls in classes:
            register_layer_element(cls)
            names.append(cls.name)
        yield
    finally:
        for n in names:
            unregister_layer_element(n)


def layer_elements() -> list[LayerElement]:
    """Every registered layer element, in registration order (built-ins first)."""
    return list(_LAYER_ELEMENTS.values())


def layer_element(name: str) -> LayerElement:
    el = _LAYER_ELEMENTS.get(name)
    if el is None:
        raise ScopeError(f"unknown artifact element {name!r}; known: {', '.join(_LAYER_ELEMENTS)}")
    return el


def known_features(base) -> frozenset[str]:
    """The format's own features plus those of every registered element."""
    out = set(base)
    for el in layer_elements():
        out.update(el.features)
    return frozenset(out)


@dataclass(frozen=True)
class FileFormat:
    """A kind of file scope writes (root attribute `format`), so `info` and `validate` read every one."""

    name: str  # the root `format` attribute, e.g. scope.artifact
    what: str  # how messages name it: "artifact", "diff file"
    major: int  # the version this scope writes
    minor: int
    schema: str  # schema file in scopecli.schema that `validate` walks
    check: Callable[[str, bool], list[str]]  # (path, quick) -> problems the schema cannot express
    info: Callable[[str], dict]  # path -> JSON-able summary (`scope info --json`)
    report: Callable[[dict], Any]  # summary -> rich renderable (`scope info`)


_FORMATS: dict[str, FileFormat] = {}


def register_file_format(fmt: FileFormat) -> FileFormat:
    _FORMATS[fmt.name] = fmt
    return fmt


def file_format(name) -> FileFormat | None:
    """The registered format of that root `format` attribute (None: not a scope file)."""
    return _FORMATS.get(name) if isinstance(name, str) else None
