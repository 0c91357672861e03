"""Links between units of different models, read from `scope diff --save` files.

Why: the gallery's unit page should answer "which unit of the other model does this one?" from
the files alone. A diff file names its two artifacts by path and model; each side is tied to an
exported artifact by the same real path (as given, or relative to the diff file), else by the
model fingerprint. Sides that match no exported artifact still show, as text without a link.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scopecli.core.errors import ScopeError
from scopecli.artifact.difffile import read_diff


@dataclass
class Side:
    """One side of a diff: where it points in the export (artifact index or None) and how to name it."""

    artifact: int | None
    name: str
    path: str


@dataclass
class UnitLink:
    """A matched unit in another model, as shown on a unit page."""

    target: Side
    layer: str
    unit: int
    corr: float
    kinds: list[str]  # "best match", "mutual best", "one-to-one"
    above_floor: bool | None
    floor: float
    diff_name: str


@dataclass
class DiffSummary:
    path: str
    a: Side
    b: Side
    pairs: list[tuple[str, str, int]]  # (layer_a, layer_b, mutual best count)
    links: dict = field(default_factory=dict)  # (artifact, layer, unit) -> list[UnitLink]
    data: dict = field(default_factory=dict)  # the whole file as `read_diff` returns it (the comparison page)


def _real(p: str) -> str:
    try:
        return os.path.realpath(p)
    except (OSError, ValueError):
        return p


def _resolve_side(path: str, model: dict, diff_path: str, artifacts: list[tuple[str, str]]) -> int | None:
    """Index of the exported artifact this side refers to; artifacts = [(real path, fingerprint)]."""
    candidates = [path]
    if not os.path.isabs(path):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(diff_path)), path))
    for c in candidates:
        rc = _real(c)
        for i, (ap, _) in enumerate(artifacts):
            if ap == rc:
                return i
    fp = model.get("fingerprint") if isinstance(model, dict) else None
    base = os.path.basename(path)
    same = [i for i, (_, afp) in enumerate(artifacts) if fp and afp == fp]
    named = [i for i in same if os.path.basename(artifacts[i][0]) == base]
    if named:
        return named[0]
    return same[0] if same else None


def _f(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def load_diff(path: str, artifacts: list[tuple[str, str]], names: list[str]) -> DiffSummary:
    """Read one diff file and index its unit matches by (artifact index, layer, unit) on both sides."""
    p = Path(path)
    if not p.exists():
        raise ScopeError(f"--diff {path}: no such file")
    if p.is_dir():
        raise ScopeError(f"--diff {path}: is a directory, not a diff file")
    try:
        d = read_diff(p)
    except ScopeError as exc:
        raise ScopeError(f"--diff {exc}")
    except Exception as exc:  # a file that claims the format but lacks parts of it
        raise ScopeError(f"--diff {path}: not a valid scope diff file ({type(exc).__name__}: {str(exc)[:120]})")
    sides = {}
    for key in ("a", "b"):
        model = d.get(f"model_{key}") or {}
        sp = str(d.get(f"path_{key}") or "")
        idx = _resolve_side(sp, model, str(p), artifacts) if sp or model else None
        label = names[idx] if idx is not None else (model.get("name") or model.get("spec") or os.path.basename(sp) or key)
        sides[key] = Side(idx, str(label), sp)
    out = DiffSummary(path=str(path), a=sides["a"], b=sides["b"], pairs=[], data=d)
    name = p.name
    try:
        for m in d.get("matching", []):
            la, lb = str(m["layer_a"]), str(m["layer_b"])
            floor = _f(m.get("floor", math.nan))
            best_b = np.asarray(m.get("best_b", []), dtype=np.int64).reshape(-1)
            best_c = np.asarray(m.get("best_b_corr", []), dtype=np.float64).reshape(-1)
            buddies = {(int(a), int(b)) for a, b in np.asarray(m.get("buddies", np.zeros((0, 2))), np.int64).reshape(-1, 2)}
            assign = list(zip(np.asarray(m.get("assign_a", []), np.int64).reshape(-1).tolist(),
                              np.asarray(m.get("assign_b", []), np.int64).reshape(-1).tolist(),
                              np.asarray(m.get("assign_corr", []), np.float64).reshape(-1).tolist()))
            out.pairs.append((la, lb, len(buddies)))
            corr_of = {}
            for ua in range(min(len(best_b), len(best_c))):
                ub = int(best_b[ua])
                if ub >= 0:
                    corr_of[(ua, ub)] = float(best_c[ua])
            for ua, ub, c in assign:
                corr_of.setdefault((ua, ub), float(c))
            kinds: dict[tuple[int, int], list[str]] = {}
            for ua in range(len(best_b)):
                if best_b[ua] >= 0:
                    kinds.setdefault((ua, int(best_b[ua])), []).append("best match")
            for pair in buddies:
                kinds.setdefault(pair, []).append("mutual best")
            for ua, ub, _ in assign:
                kinds.setdefault((ua, ub), []).append("one-to-one")
            for (ua, ub), ks in sorted(kinds.items()):
                c = corr_of.get((ua, ub), math.nan)
                above = None if math.isnan(floor) or math.isnan(c) else bool(c > floor)
                if out.a.artifact is not None and ("best match" in ks or "one-to-one" in ks):
                    out.links.setdefault((out.a.artifact, la, ua), []).append(
                        UnitLink(out.b, lb, ub, c, ks, above, floor, name))
                if out.b.artifact is not None and ("mutual best" in ks or "one-to-one" in ks):
                    out.links.setdefault((out.b.artifact, lb, ub), []).append(
                        UnitLink(out.a, la, ua, c, [k for k in ks if k != "best match"], above, floor, name))
    except (KeyError, TypeError, ValueError) as exc:
        raise ScopeError(f"--diff {path}: malformed unit matching ({type(exc).__name__}: {str(exc)[:120]})")
    return out
