"""The data a unit space is fitted on: a layer's activation sample (`collect --sample N`), split once.

Why a fixed split: every method reports its fit quality on rows it did not see (one row in ten, picked by
the sample's own order, which is its random keys' order), so numbers of PCA, NMF and SAE compare, and an
SAE's early stopping has a validation set that is the same for every seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from scopecli.artifact.layout import canonical_bytes_sha256
from scopecli.core.errors import ScopeError

VALID_EVERY = 10  # one row in ten is held out
MIN_SPLIT = 50  # below this many rows every row is used for both (and the quality says so)


@dataclass
class FitData:
    """Float32 rows of the activation sample: `fit` to fit on, `valid` to measure on."""

    fit: np.ndarray  # [n_fit, C]
    valid: np.ndarray  # [n_valid, C]
    sha256: str  # of the sample (keys then vectors)
    held_out: bool  # False: valid == fit (a tiny sample)

    @property
    def width(self) -> int:
        return int(self.fit.shape[1])

    def describe(self) -> dict:
        return {"rows_fit": int(len(self.fit)), "rows_valid": int(len(self.valid)), "held_out": self.held_out}


def split_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, valid rows) of a sample of n rows."""
    idx = np.arange(n)
    if n < MIN_SPLIT:
        return idx, idx
    valid = idx % VALID_EVERY == VALID_EVERY - 1
    return idx[~valid], idx[valid]


def sample_sha256(sample) -> str:
    """sha256 over the canonical bytes of the sample's keys and vectors (what `data_sha256` records)."""
    h = hashlib.sha256()
    h.update(canonical_bytes_sha256(np.asarray(sample.keys, np.uint64)).encode())
    h.update(canonical_bytes_sha256(np.asarray(sample.vectors16, np.float16)).encode())
    return h.hexdigest()


def fit_data(art, layer: str) -> FitData:
    """The split sample of `layer`, or a one-line error saying how to get one."""
    sample = art.sample(layer)
    if sample is None or len(sample) == 0:
        raise ScopeError(f"layer {layer} has no activation sample in {art.path}; run `scope collect --sample N` first "
                         f"(e.g. scope collect MODEL --data DIR --layer {layer} --sample 20000 -o {art.path})")
    x = sample.vectors
    if not np.isfinite(x).all():
        raise ScopeError(f"the activation sample of {layer} holds non-finite values; collect it again")
    fit, valid = split_rows(len(x))
    return FitData(x[fit], x[valid], sample_sha256(sample), len(fit) != len(x))
