"""Models: resolve a spec to a ready module (families), its layers and receptive fields, truncated capture.

    from scopecli.model import resolve_model, layer_table, capture
    loaded = resolve_model("resnet18", weights="random")
    acts = capture(loaded.module, x, ["layer3"])
"""

from scopecli.model.capture import LayerTap, capture, get_module
from scopecli.model.layers import LayerInfo, default_layers, find_layer, layer_table
from scopecli.model.loaded import LoadedModel, Preprocess, model_fingerprint
from scopecli.model.resolve import catalogue, resolve_model

__all__ = [
    "LayerInfo",
    "LayerTap",
    "LoadedModel",
    "Preprocess",
    "capture",
    "catalogue",
    "default_layers",
    "find_layer",
    "get_module",
    "layer_table",
    "model_fingerprint",
    "resolve_model",
]
