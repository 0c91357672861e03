"""`scope diff`: compare two artifacts (two models, or two checkpoints of one) from the files alone.

Why: a researcher wants to know which layers of model B represent images like which layers of
model A, which units correspond, and — for two checkpoints of one architecture — which units
changed. Everything is computed from stored probe activations, examples and statistics; no model
is run. Every similarity is printed beside a floor from a seeded stimulus-permutation control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scopecli.compare.cka import GramSet, cka_table, permutation_floor
from scopecli.compare.matching import UnitMatching, match_units, self_correlation
from scopecli.compare.monosemanticity import spaces_report
from scopecli.compare.probes import ProbeSource, common_images, open_checked, require_shared, rows_for
from scopecli.core.errors import ScopeError
from scopecli.core.progress import progress
from scopecli.artifact.difffile import save_diff
from scopecli.artifact.reader import notebook_html

STAT_FIELDS = ("mean", "std", "max", "frac_pos")


@dataclass
class PairMatch:
    """Unit matching between one layer of A and one layer of B."""

    layer_a: str
    layer_b: str
    matching: UnitMatching


@dataclass
class UnitChange:
    """Same layer in two checkpoints of one architecture: how much each unit changed."""

    layer: str
    self_corr: np.ndarray  # float64 [U]: unit i of A vs unit i of B over the shared probe images
    jaccard: np.ndarray | None  # float64 [U]: overlap of top-k example images (by sha256), NaN if unknown
    k: int  # top-k used for the Jaccard
    delta: dict[str, np.ndarray] = field(default_factory=dict)  # stat -> float64 [U], B minus A

    def changed_most(self, n: int = 10) -> list[int]:
        """Units whose activations agree least between A and B (lowest self-correlation), worst first."""
        r = np.where(np.isnan(self.self_corr), np.inf, self.self_corr)
        order = np.argsort(r, kind="stable")
        return [int(u) for u in order[:n] if np.isfinite(r[u])]


@dataclass
class DiffResult:
    """Everything `scope diff` computed; `to_json()` is the --json output, `save()` the --save file."""

    path_a: str
    path_b: str
    model_a: dict
    model_b: dict
    n_shared: int
    n_cka: int  # images used for CKA (a seeded subsample when more than max_images are shared)
    n_nonfinite: int  # shared images left out because a probe activation is inf/NaN (float16 overflow)
    seed: int
    permutations: int
    layers_a: list[str]
    layers_b: list[str]
    units_a: list[int]
    units_b: list[int]
    cka_linear: np.ndarray  # [La, Lb]
    cka_debiased: np.ndarray
    floor_linear: np.ndarray  # max over `permutations` stimulus shuffles
    floor_debiased: np.ndarray
    pairs: list[PairMatch]
    changes: list[UnitChange]
    same_architecture: bool
    spaces: dict = field(default_factory=dict)  # "a"/"b": unit spaces among the layers, with fit quality and purity

    def _repr_html_(self) -> str | None:
        """Jupyter: the gallery's comparison page of this result (after `import scopecli`)."""
        return notebook_html("diff", self)

    def best_b(self) -> list[int]:
        """Index into layers_b of each A layer's best match (by debiased CKA; -1 if undefined)."""
        out = []
        for row in self.cka_debiased:
            out.append(-1 if np.isnan(row).all() else int(np.nanargmax(row)))
        return out

    def to_json(self, top: int = 10) -> dict:
        best = self.best_b()
        layers = []
        for i, name in enumerate(self.layers_a):
            j = best[i]
            layers.append({
                "layer": name,
                "units": self.units_a[i],
                "best_b": self.layers_b[j] if j >= 0 else None,
                "cka_linear": _f(self.cka_linear[i, j]) if j >= 0 else None,
                "cka_linear_floor": _f(self.floor_linear[i, j]) if j >= 0 else None,
                "cka_debiased": _f(self.cka_debiased[i, j]) if j >= 0 else None,
                "cka_debiased_floor": _f(self.floor_debiased[i, j]) if j >= 0 else None,
            })
        return {
            "a": {"path": self.path_a, "model": self.model_a},
            "b": {"path": self.path_b, "model": self.model_b},
            "shared_images": self.n_shared,
            "cka_images": self.n_cka,
            "nonfinite_images_left_out": self.n_nonfinite,
            "seed": self.seed,
            "permutations": self.permutations,
            "floor": "max CKA over this many seeded shuffles of which image is which in B",
            "same_architecture": self.same_architecture,
            "layers_a": self.layers_a,
            "layers_b": self.layers_b,
            "units_a": self.units_a,
            "units_b": self.units_b,
            "cka_linear": _m(self.cka_linear),
            "cka_debiased": _m(self.cka_debiased),
            "cka_linear_floor": _m(self.floor_linear),
            "cka_debiased_floor": _m(self.floor_debiased),
            "best_match": layers,
            "unit_matching": [_pair_json(p, top) for p in self.pairs],
            "unit_changes": [_change_json(c, top) for c in self.changes],
            "spaces": self.spaces,
        }

    def save(self, path: str | Path) -> None:
        save_diff(self, path)


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def _m(a: np.ndarray) -> list:
    return [[_f(v) for v in row] for row in np.asarray(a)]


def _l(a: np.ndarray) -> list:
    return [_f(v) for v in np.asarray(a, dtype=np.float64)]


def _pair_json(p: PairMatch, top: int) -> dict:
    m = p.matching
    return {
        "layer_a": p.layer_a,
        "layer_b": p.layer_b,
        **m.summary(),
        "top_pairs": [{"unit_a": a, "unit_b": b, "corr": _f(r)} for a, b, r in m.top_pairs(top)],
        "unmatched_a": [int(u) for u in m.unmatched_a],
        "best_b": [int(u) for u in m.best_b],
        "best_b_corr": _l(m.best_b_corr),
        "buddies": [[int(a), int(b)] for a, b in m.buddies],
        "assignment": {"a": [int(u) for u in m.assign_a], "b": [int(u) for u in m.assign_b],
                       "corr": _l(m.assign_corr)},
    }


def _change_json(c: UnitChange, top: int) -> dict:
    return {
        "layer": c.layer,
        "median_self_corr": _f(np.nanmedian(c.self_corr)) if not np.isnan(c.self_corr).all() else None,
        "mean_jaccard": _f(np.nanmean(c.jaccard)) if c.jaccard is not None and not np.isnan(c.jaccard).all()
        else None,
        "k": c.k,
        "changed_most": c.changed_most(top),
        "self_corr": _l(c.self_corr),
        "jaccard": _l(c.jaccard) if c.jaccard is not None else None,
        "delta": {k: _l(v) for k, v in c.delta.items()},
    }


def _pick_layers(src: ProbeSource, wanted: list[str] | None) -> list[str]:
    src.require_any()
    if not wanted:
        return list(src.layers)
    for name in wanted:
        src.require_layer(name)
    return list(dict.fromkeys(wanted))


def _top_jaccard(art_a, art_b, layer: str, units: int) -> tuple[np.ndarray | None, int]:
    """Jaccard overlap of each unit's top-k example images (compared by sha256) between A and B."""
    ea, eb = art_a.examples(layer, "top"), art_b.examples(layer, "top")
    ta, tb = art_a.dataset, art_b.dataset
    if ea is None or eb is None or ta is None or tb is None:
        return None, 0
    k = int(min(ea.image_index.shape[1], eb.image_index.shape[1]))
    out = np.full(units, np.nan)

    def sets(ex, table):
        res = {}
        for row, u in enumerate(np.asarray(ex.units)):
            res[int(u)] = {table.sha256[i] for i in ex.image_index[row, :k] if i >= 0}
        return res

    sa, sb = sets(ea, ta), sets(eb, tb)
    for u in range(units):
        if u in sa and u in sb and (sa[u] or sb[u]):
            out[u] = len(sa[u] & sb[u]) / len(sa[u] | sb[u])
    return out, k


def _stat_delta(art_a, art_b, layer: str, units: int) -> dict[str, np.ndarray]:
    sa, sb = art_a.stats(layer), art_b.stats(layer)
    if sa is None or sb is None:
        return {}
    out = {}
    for name in STAT_FIELDS:
        va, vb = np.full(units, np.nan), np.full(units, np.nan)
        va[np.asarray(sa.units)] = np.asarray(getattr(sa, name), dtype=np.float64)
        vb[np.asarray(sb.units)] = np.asarray(getattr(sb, name), dtype=np.float64)
        out[name] = vb - va
    return out


def parse_pair(text: str) -> tuple[str, str]:
    """`LAYER_A=LAYER_B` -> (LAYER_A, LAYER_B)."""
    a, sep, b = text.partition("=")
    if not sep or not a.strip() or not b.strip():
        raise ScopeError(f"--pair '{text}' must look like LAYER_A=LAYER_B, e.g. layer4.2=features.7")
    return a.strip(), b.strip()


def run_diff(
    path_a: str | Path,
    path_b: str | Path,
    layers_a: list[str] | None = None,
    layers_b: list[str] | None = None,
    pairs: list[tuple[str, str]] | None = None,
    seed: int = 0,
    permutations: int = 20,
    quiet: bool = True,
    max_images: int = 1000,
) -> DiffResult:
    """Compare two artifacts. Layers default to all layers with probe activations.

    `layers_b` defaults to `layers_a` when B has all of those layers, else to all of B's probed
    layers. `pairs` (A layer, B layer) select the unit matchings; default: each A layer with its
    best B layer by debiased CKA. CKA uses at most `max_images` shared images (a seeded subsample;
    memory grows with its square); unit matching and per-unit changes use all of them.
    """
    if permutations < 1:
        raise ScopeError(f"--permutations must be at least 1 (the floor needs a shuffle), got {permutations}")
    if max_images < 10:
        raise ScopeError(f"--max-images must be at least 10, got {max_images}")
    same_file = Path(path_a).resolve() == Path(path_b).resolve()
    art_a = open_checked(path_a)
    art_b = art_a if same_file else open_checked(path_b)
    try:
        return _diff(art_a, art_b, str(path_a), str(path_b), layers_a, layers_b, pairs, seed,
                     permutations, quiet, max_images)
    finally:
        art_a.close()
        if not same_file:
            art_b.close()


def _diff(art_a, art_b, label_a, label_b, layers_a, layers_b, pairs, seed, permutations, quiet,
          max_images) -> DiffResult:
    src_a = ProbeSource(art_a, label_a)
    src_b = src_a if art_b is art_a else ProbeSource(art_b, label_b)
    la = _pick_layers(src_a, layers_a)
    if layers_b:
        lb = _pick_layers(src_b, layers_b)
    elif layers_a:
        src_b.require_any()
        lb = list(la) if all(name in src_b.layers for name in la) else list(src_b.layers)
    else:
        lb = _pick_layers(src_b, None)
    pairs = list(pairs or [])
    for a_name, b_name in pairs:
        src_a.require_layer(a_name)
        src_b.require_layer(b_name)

    used = [(src_a, list(dict.fromkeys(la + [p[0] for p in pairs]))),
            (src_b, list(dict.fromkeys(lb + [p[1] for p in pairs])))]
    shared = common_images(used)
    require_shared(len(shared), label_a, label_b)
    # float16 probes overflow to inf for huge activations: leave out images that are not finite everywhere
    finite = np.ones(len(shared), bool)
    for src, names in used:
        for name in names:
            a, shas = src.get(name)
            finite &= np.isfinite(a[rows_for(shas, shared)]).all(axis=1)
    n_nonfinite = int((~finite).sum())
    if n_nonfinite:
        shared = [h for h, ok in zip(shared, finite) if ok]
        require_shared(len(shared), label_a, label_b)

    cache: dict[tuple[int, str], np.ndarray] = {}

    def acts(src, name):
        """float32 [shared images, units] in the shared (hash) order; read and converted once."""
        key = (id(src), name)
        if key not in cache:
            a, shas = src.get(name)
            cache[key] = np.asarray(a[rows_for(shas, shared)], dtype=np.float32)
        return cache[key]

    arch_a, arch_b = art_a.model.get("architecture"), art_b.model.get("architecture")
    same_arch = (arch_a == arch_b or not arch_a or not arch_b) and all(
        name in lb and art_a.layer(name).shape == art_b.layer(name).shape for name in la)
    change_layers = [n for n in la if n in lb] if same_arch else []
    n_steps = len(la) + len(lb) + permutations + max(len(pairs), len(la)) + len(change_layers)
    with progress(n_steps, "diff", quiet=quiet, unit="step") as bar:
        # CKA holds one n x n Gram per layer: beyond max_images shared images, a seeded subsample
        cka_rows = np.arange(len(shared))
        if len(shared) > max_images:
            cka_rows = np.sort(np.random.default_rng([seed, 1]).choice(len(shared), max_images, replace=False))
        grams = []
        for src, names in ((src_a, la), (src_b, lb)):
            mats = []
            for name in names:
                mats.append(acts(src, name)[cka_rows])
                bar.advance()
            grams.append(GramSet.from_acts(names, mats))
            del mats
        ga, gb = grams
        lin, deb = cka_table(ga, gb)
        fl, fd = permutation_floor(ga, gb, permutations, seed, on_step=bar.advance)
        del grams, ga, gb

        if not pairs:
            for i, name in enumerate(la):
                row = deb[i]
                if not np.isnan(row).all():
                    pairs.append((name, lb[int(np.nanargmax(row))]))
        matches = []
        for k, (a_name, b_name) in enumerate(pairs):
            m = match_units(acts(src_a, a_name), acts(src_b, b_name), seed=seed + 1 + k)
            matches.append(PairMatch(a_name, b_name, m))
            bar.advance()

        changes = []
        for name in change_layers:
            units = art_a.layer(name).units
            r = self_correlation(acts(src_a, name), acts(src_b, name))
            jac, k = _top_jaccard(art_a, art_b, name, units)
            changes.append(UnitChange(name, r, jac, k, _stat_delta(art_a, art_b, name, units)))
            bar.advance()

    return DiffResult(
        path_a=label_a, path_b=label_b, model_a=dict(art_a.model), model_b=dict(art_b.model),
        n_shared=len(shared), n_cka=len(cka_rows), n_nonfinite=n_nonfinite, seed=seed, permutations=permutations, layers_a=la, layers_b=lb,
        units_a=[int(art_a.layer(n).units) for n in la], units_b=[int(art_b.layer(n).units) for n in lb],
        cka_linear=lin, cka_debiased=deb, floor_linear=fl, floor_debiased=fd, pairs=matches,
        changes=changes, same_architecture=bool(same_arch),
        spaces={"a": spaces_report(art_a, list(used[0][1])), "b": spaces_report(art_b, list(used[1][1]))},
    )
