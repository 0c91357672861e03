"""render: feature visualization (Lucid-style) for any PyTorch vision model.

    from scopecli.render import render_units, plan_targets, RenderSettings
    result = render_units(loaded_model, plan_targets({"layer3": [0, 1, 2]}), RenderSettings(steps=256))
    for layer, record in result.records: ...
"""

from scopecli.render.engine import (RenderResult, RenderSettings, derive_seed, plan_targets, render_units,
    resolve_device)
from scopecli.render.objectives import RenderTarget

__all__ = [
    "RenderResult",
    "RenderSettings",
    "RenderTarget",
    "derive_seed",
    "plan_targets",
    "render_units",
    "resolve_device",
]
