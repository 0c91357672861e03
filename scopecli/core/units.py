"""Parsing of unit selections (`0:64`, `3,5,9`, `all`), unit addresses (`layer4.2:117`) and unit-space layer
names (`_blocks.14@sae256`: the space `sae256` fitted on layer `_blocks.14`, whose units are `..@sae256:17`)."""

from __future__ import annotations

import re

from scopecli.core.errors import ScopeError

SPACE_SEP = "@"
SPACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_space_name(name: str) -> str:
    """A unit space's own name (the part after '@'): letters, digits, '_' and '-', at most 64."""
    if not isinstance(name, str) or not SPACE_NAME.fullmatch(name):
        raise ScopeError(f"space name {name!r} must be 1-64 letters, digits, '_' or '-' (e.g. sae256)")
    return name


def split_space(layer: str) -> tuple[str, str | None]:
    """`BASE@SPACE` -> (BASE, SPACE); a plain layer name -> (name, None)."""
    base, sep, space = str(layer).rpartition(SPACE_SEP)
    if not sep:
        return str(layer), None
    if not base:
        raise ScopeError(f"layer {layer!r}: a unit space is named LAYER@SPACE, e.g. _blocks.14@sae256")
    return base, check_space_name(space)


def space_layer(base: str, space: str) -> str:
    """The layer name of space `space` on layer `base`."""
    if SPACE_SEP in base:
        raise ScopeError(f"layer {base!r} is itself a unit space; spaces are fitted on model layers")
    return f"{base}{SPACE_SEP}{check_space_name(space)}"


def parse_units(spec: str, n: int) -> list[int]:
    """Turn a unit selection into sorted unique indices in [0, n); errors give the valid range."""
    text = str(spec).strip().lower()
    if n <= 0:
        raise ScopeError("this layer has no units")
    if text in ("all", "*", ""):
        return list(range(n))
    picked: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part or "-" in part[1:]:
                sep = ":" if ":" in part else "-"
                lo_s, hi_s = part.split(sep, 1)
                lo = int(lo_s) if lo_s.strip() else 0
                hi = int(hi_s) if hi_s.strip() else n
                if lo < 0 or hi > n or lo >= hi:
                    raise ScopeError(
                        f"unit range '{part}' is outside the layer's units 0..{n - 1} (ranges are start:stop, stop excluded)"
                    )
                picked.update(range(lo, hi))
            else:
                u = int(part)
                if u < 0 or u >= n:
                    raise ScopeError(f"unit {u} is out of range: this layer has units 0..{n - 1}")
                picked.add(u)
        except ValueError:
            raise ScopeError(
                f"cannot read unit selection '{spec}': use 'all', a range like 0:64, or a list like 3,5,9"
            ) from None
    if not picked:
        raise ScopeError(f"unit selection '{spec}' selects no units")
    return sorted(picked)


def parse_unit_address(address: str) -> tuple[str, int]:
    """Split `layer:unit` at the last colon (layer names may contain dots, never colons)."""
    layer, sep, unit = str(address).rpartition(":")
    if not sep or not layer:
        raise ScopeError(f"unit address '{address}' must look like layer:unit, e.g. layer4.2:117")
    try:
        index = int(unit)
    except ValueError:
        raise ScopeError(f"unit address '{address}': '{unit}' is not a unit index") from None
    if index < 0:
        raise ScopeError(f"unit address '{address}': unit index must be >= 0")
    return layer, index
