"""Parsing of unit selections (`0:64`, `3,5,9`, `all`) and unit addresses (`layer4.2:117`)."""

from __future__ import annotations

from scopecli.errors import ScopeError


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
