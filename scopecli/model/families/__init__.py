"""Model families: where a model spec comes from, how its module is built, and how photos reach it.

Why a registry (registry.py): every family (torchvision, the demo's EfficientNet-Lite0, custom factories,
timm, open_clip and hf) answers the same questions — which specs it claims, how to build a module for given
weights, its preprocessing, its rows for `scope models` — so adding one is one module here that calls
`register_family`, plus its import below; the resolver, `scope models` and the "unknown model" hint follow.
Specs are claimed by the first family (in registration order, the import order below) whose `claim`
accepts them; claims should not overlap.

Weights everywhere: `DEFAULT`, a family's enum name, `random` (seeded, reproducible) or a PATH to a state
dict (always `weights_only=True`, see model/weights.py).
"""

# registration order = claim order: custom, efficientnet_lite0, torchvision, then the extras timm, open_clip, hf
from scopecli.model.families import factory, efficientnet_lite, torchvision, timm, open_clip, hf  # noqa: F401,I001
from scopecli.model.families.registry import FAMILIES, BuiltModule, ModelFamily, family_for, register_family

__all__ = ["FAMILIES", "BuiltModule", "ModelFamily", "family_for", "register_family"]
