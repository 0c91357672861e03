"""The truncated forward runs nothing after the deepest requested layer."""

import torch
import torchvision

import tinymodels
from scopecli.model import LayerTap


def test_truncation_stops_after_deepest_layer():
    model = torchvision.models.resnet18(weights=None).eval()
    ran = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in model.named_modules() if n]
    try:
        with LayerTap(model, ["layer1.0", "layer2.0"]) as tap:
            out = tap(torch.randn(2, 3, 64, 64))
    finally:
        for h in handles:
            h.remove()
    assert set(out) == {"layer1.0", "layer2.0"}
    assert out["layer2.0"].shape == (2, 128, 8, 8)
    assert "layer2.0" in ran
    assert not any(n.startswith(("layer2.1", "layer3", "layer4", "fc", "avgpool")) for n in ran)


def test_tap_keeps_gradients_and_matches_full_forward():
    model = tinymodels.tiny_resnet().eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with LayerTap(model, ["blocks.1"]) as tap:
        out = tap(x)["blocks.1"]
    out.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    store = {}
    h = model.blocks[1].register_forward_hook(lambda m, i, o: store.setdefault("o", o))
    model(x)
    h.remove()
    assert torch.equal(store["o"], out.detach())
