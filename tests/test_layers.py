"""Layer table: analytic receptive fields checked against gradients; default layer sets per family."""

import pytest
import torch
import torchvision

import tinymodels
from scopecli.core.errors import ScopeError
from scopecli.model import default_layers, find_layer, get_module, layer_table


def measured_field(model, name, size, trials=3, channels=3):
    """Input rows/cols that reach the centre position of a layer, from gradients (union over inputs)."""
    module = get_module(model, name)
    rows = torch.zeros(size, dtype=torch.bool)
    cols = torch.zeros(size, dtype=torch.bool)
    for seed in range(trials):
        torch.manual_seed(seed)
        x = torch.randn(1, channels, size, size, requires_grad=True)
        store = {}
        handle = module.register_forward_hook(lambda m, i, o: store.setdefault("out", o))
        try:
            model(x)
        finally:
            handle.remove()
        out = store["out"]
        cy, cx = out.shape[2] // 2, out.shape[3] // 2
        out[0, :, cy, cx].sum().backward()
        g = x.grad[0].abs().sum(0)
        rows |= g.sum(1) > 0
        cols |= g.sum(0) > 0
    idx_r = rows.nonzero().flatten()
    idx_c = cols.nonzero().flatten()
    return (int(idx_r.min()), int(idx_r.max()) + 1, int(idx_c.min()), int(idx_c.max()) + 1), (cy, cx)


def analytic_field(info, cy, cx, size):
    y0 = info.rf_start + cy * info.rf_stride
    x0 = info.rf_start + cx * info.rf_stride
    clip = lambda a: min(max(a, 0), size)  # noqa: E731
    return clip(y0), clip(y0 + info.rf_size), clip(x0), clip(x0 + info.rf_size)


def _randomize_bn(model):
    # Random weights keep BN at identity; fine. Make sure every weight is non-zero so gradients flow.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
    return model.eval()


@pytest.mark.parametrize(
    "factory,size,layers",
    [
        (tinymodels.tiny_cnn, 64, ["1", "3", "4", "6"]),
        (tinymodels.tiny_resnet, 64, ["stem", "blocks.0", "blocks.1", "blocks.2"]),
        (lambda: torchvision.models.resnet18(weights=None), 160, ["relu", "maxpool", "layer1.0", "layer2.0", "layer2.1.conv1"]),
        (lambda: torchvision.models.alexnet(weights=None), 127, ["features.1", "features.4", "features.7"]),
    ],
)
def test_receptive_field_matches_gradient_measurement(factory, size, layers):
    torch.manual_seed(0)
    model = _randomize_bn(factory())
    table = layer_table(model, size)
    for name in layers:
        info = find_layer(table, name)
        measured, (cy, cx) = measured_field(model, name, size)
        assert (cy, cx) == (info.height // 2, info.width // 2)
        assert measured == analytic_field(info, cy, cx, size), name


def test_shapes_and_known_resnet50_fields():
    model = torchvision.models.resnet50(weights=None).eval()
    table = {info.name: info for info in layer_table(model, 224)}
    assert (table["layer1.0"].channels, table["layer1.0"].height) == (256, 56)
    assert (table["layer4.2"].channels, table["layer4.2"].height) == (2048, 7)
    # published receptive fields of resnet50 (e.g. Araujo et al., Distill 2019): 427 px for the last block
    assert table["layer4.2"].rf_size == 427 and table["layer4.2"].rf_stride == 32
    assert table["fc"].channels == 1000 and table["fc"].height == 1


FAMILIES = {
    "resnet50": (224, [f"layer1.{i}" for i in range(3)] + [f"layer2.{i}" for i in range(4)] + [f"layer3.{i}" for i in range(6)] + [f"layer4.{i}" for i in range(3)]),
    "googlenet": (224, ["conv1", "conv2", "conv3"] + [f"inception{b}" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")]),
    "vgg11": (224, ["features.1", "features.4", "features.7", "features.9", "features.12", "features.14", "features.17", "features.19"]),
    "alexnet": (224, ["features.1", "features.4", "features.7", "features.9", "features.11"]),
    "mobilenet_v3_small": (224, [f"features.{i}" for i in range(13)]),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_default_layer_sets(name):
    from scopecli.model import resolve_model

    size, expected = FAMILIES[name]
    model = resolve_model(name, weights="random").module
    assert default_layers(model, size) == expected


def test_default_layers_efficientnet_lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    from scopecli.model import resolve_model

    model = resolve_model("efficientnet_lite0", weights="random").module
    assert default_layers(model, 224) == [f"_blocks.{i}" for i in range(16)]


def test_default_layers_generic_custom_models():
    assert default_layers(tinymodels.tiny_cnn().eval(), 64) == ["1", "3", "6"]
    assert default_layers(tinymodels.tiny_resnet().eval(), 64) == ["blocks.0", "blocks.1", "blocks.2"]


def test_unknown_layer_suggests_close_names():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ScopeError, match="did you mean layer4.1"):
        get_module(model, "layer4.l")
    with pytest.raises(ScopeError, match="unknown layer"):
        find_layer(layer_table(model, 64), "nothing_like_it")
