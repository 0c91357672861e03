"""Probe activations of several artifacts lined up on the images they share (matched by file sha256).

Why: two artifacts may list the same photos under different paths or in another order; only the
content hash says two rows are the same stimulus. Everything in compare reads probes through here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scopecli.core.errors import ScopeError
from scopecli.core.fileio import check_input_file, did_you_mean
from scopecli.artifact import open_artifact

MIN_SHARED = 100  # fewer shared probe images than this make CKA and correlations too noisy to report
NO_PROBE_HINT = "run `scope collect` on both models with the same --data"


def open_checked(path: str | Path):
    """Open an artifact for reading, with a one-line error for a missing path."""
    return open_artifact(Path(check_input_file(path, "scope artifact (.h5)")))


class ProbeSource:
    """One artifact's probe activations, read lazily and cached per layer, with the sha256 of each row."""

    def __init__(self, art, label: str):
        self.art = art
        self.label = label
        self._cache: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._layers: list[str] | None = None

    @property
    def layers(self) -> list[str]:
        """Layers that have probe activations, in the artifact's order."""
        if self._layers is None:
            self._layers = [name for name in self.art.layers if self._load(name) is not None]
        return self._layers

    def _load(self, layer: str):
        if layer not in self._cache:
            pb = self.art.probe(layer)
            if pb is None or pb.acts.shape[0] == 0:
                self._cache[layer] = None  # type: ignore[assignment]
            else:
                table = self.art.dataset
                if table is None:
                    raise ScopeError(f"{self.label}: probe activations without an image table; {NO_PROBE_HINT}")
                idx = np.asarray(pb.image_index, dtype=np.int64)
                if idx.size and (idx.min() < 0 or idx.max() >= len(table.sha256)):
                    raise ScopeError(f"{self.label}: probe of layer {layer} points outside the image table")
                shas = [table.sha256[i] for i in idx]
                self._cache[layer] = (np.asarray(pb.acts), shas)
        return self._cache[layer]

    def find(self, layer: str) -> tuple[np.ndarray, list[str]] | None:
        """(acts, sha256 per row) of one layer, or None when it has no probe activations."""
        return self._load(layer) if layer in self.art.layers else None

    def get(self, layer: str) -> tuple[np.ndarray, list[str]]:
        """(acts float16 [P, U], sha256 per row) of one layer; ScopeError if the layer has no probe."""
        self.require_layer(layer)
        return self._cache[layer]

    def require_layer(self, layer: str) -> None:
        if layer in self.art.layers and self._load(layer) is not None:
            return
        if layer in self.art.layers:
            raise ScopeError(f"{self.label}: layer {layer} has no probe activations; {NO_PROBE_HINT}")
        raise ScopeError(f"{self.label}: no layer named {layer}" + did_you_mean(layer, self.art.layers, n=3))

    def require_any(self) -> None:
        if not self.layers:
            raise ScopeError(f"{self.label} has no probe activations; {NO_PROBE_HINT}")


def shared_rows(shas_a: list[str], shas_b: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows of a and of b holding the same images (first occurrence of each hash), ordered by hash."""
    first_a: dict[str, int] = {}
    for i, s in enumerate(shas_a):
        first_a.setdefault(s, i)
    first_b: dict[str, int] = {}
    for i, s in enumerate(shas_b):
        first_b.setdefault(s, i)
    common = sorted(first_a.keys() & first_b.keys())
    ra = np.fromiter((first_a[s] for s in common), dtype=np.int64, count=len(common))
    rb = np.fromiter((first_b[s] for s in common), dtype=np.int64, count=len(common))
    return ra, rb, common


def common_images(sources: list[tuple[ProbeSource, list[str]]]) -> list[str]:
    """Sorted hashes present in the probe of every (source, layers) given."""
    common: set[str] | None = None
    for src, layers in sources:
        for layer in layers:
            shas = set(src.get(layer)[1])
            common = shas if common is None else common & shas
    return sorted(common or ())


def rows_for(shas: list[str], wanted: list[str]) -> np.ndarray:
    """Row of each wanted hash (first occurrence) in a probe's hash list."""
    first: dict[str, int] = {}
    for i, s in enumerate(shas):
        first.setdefault(s, i)
    return np.fromiter((first[s] for s in wanted), dtype=np.int64, count=len(wanted))


def require_shared(n: int, label_a: str, label_b: str) -> None:
    if n < MIN_SHARED:
        raise ScopeError(
            f"only {n} probe images are shared by {label_a} and {label_b} (need at least {MIN_SHARED}): "
            f"{NO_PROBE_HINT}"
        )
