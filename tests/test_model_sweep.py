"""The layer adapter on a sample of torchvision architectures that covers every layout family and the ops
that once needed teaching, with the checks of scripts/sweep_models.py (tests/sweep_checks.py): unit axes
against the model's own shapes at a second input size, default layers' receptive fields against the
gradient support of their centre position, and render + collect + validate into one artifact.

The sweep of all 80 models takes far longer; this sample keeps CI under two minutes on two CPU cores.
"""

import dataclasses

import pytest
import torch

import sweep_checks
from scopecli.model import find_layer, layer_table, resolve_model

# name -> (default layers whose field is checked, spread over the set; render + collect + validate?)
SAMPLE = {
    "resnet18": (None, True),  # nchw, residual adds
    "mobilenet_v3_small": (None, True),  # squeeze-excitation gates (global_context)
    "efficientnet_b0": (6, False),  # SE gates, stochastic depth
    "shufflenet_v2_x0_5": (6, True),  # channel shuffle: reshape/transpose/flatten, chunk, concat
    "squeezenet1_0": (None, False),  # fire modules: concat of two paths
    "googlenet": (4, False),  # inception concat, max-pool branch
    "densenet121": (None, False),  # dense concat, avg-pool transitions
    "regnet_y_400mf": (4, False),  # grouped convs, SE
    "convnext_tiny": (4, True),  # nhwc internals, layer scale
    "swin_t": (4, True),  # nhwc, windowed attention, cyclic shift, patch merging: measured fields
    "vit_b_16": (3, True),  # tokens with a class token, global attention
}


@pytest.mark.parametrize("name", list(SAMPLE))
def test_sample_model(name):
    rf_layers, pipeline = SAMPLE[name]
    row = sweep_checks.check_model(name, steps=1, images=4, rf_layers=rf_layers, pipeline=pipeline)
    assert row.ok, "\n".join([f"{row.status}: {row.reason}"] + row.problems)
    assert row.rf == "ok" and row.units == "ok"


def test_checks_catch_a_wrong_field_and_a_wrong_unit_axis():
    """The checks are not vacuous: a field moved by a quarter of its size, or units read off the wrong
    axis, fail."""
    loaded = resolve_model("resnet18", weights="random")
    table = layer_table(loaded.module, 224)
    info = find_layer(table, "layer2.1")
    problems, _ = sweep_checks.rf_problems(loaded.module, [info], 224)
    assert problems == []
    moved = dataclasses.replace(info, rf_start=info.rf_start + info.rf_size // 3)
    assert sweep_checks.rf_problems(loaded.module, [moved], 224)[0]
    shape1 = (2, 128, 28, 28)
    assert sweep_checks.unit_problems(info, shape1, (3, 128, 32, 32)) == []
    nhwc = dataclasses.replace(info, layout=dataclasses.replace(info.layout, perm=(0, 3, 1, 2)))
    assert sweep_checks.unit_problems(nhwc, shape1, (3, 128, 32, 32))
    # without a second size, the odd-one-out rule: 56 is a grid side, never the units (Swin's features.*)
    assert sweep_checks.true_axes((2, 56, 56, 96), None) == (3, {1, 2})


def test_global_field_must_cover_the_input():
    loaded = resolve_model("vit_b_16", weights="random")
    table = layer_table(loaded.module, 224)
    info = find_layer(table, "encoder.layers.encoder_layer_0")
    assert info.layout.field == "global"
    assert sweep_checks.rf_problems(loaded.module, [info], 224)[0] == []
    patch = find_layer(table, "conv_proj")  # 16x16 patches: a local field claimed global must fail
    claimed = dataclasses.replace(patch, layout=dataclasses.replace(patch.layout, field="global"))
    assert sweep_checks.rf_problems(loaded.module, [claimed], 224)[0]


def test_hold_global_pools_detaches_only_global_poolings():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    with sweep_checks.HoldGlobalPools():
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        local = torch.nn.functional.avg_pool2d(x, 2)
    assert not pooled.requires_grad and local.requires_grad


def _whole_names(text: str, names) -> list[str]:
    """Names that do not stand whole on some line (cut, wrapped or missing)."""
    lines = text.splitlines()
    return [n for n in names if not any(n in line.split() for line in lines)]


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "vit_b_16"])
def test_layers_names_are_never_cut_at_80_columns(name, scope_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    r = scope_cli("layers", name, "--weights", "random")
    assert r.code == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    loaded = resolve_model(name, weights="random")
    assert _whole_names(r.stdout, [i.name for i in layer_table(loaded.module, 224)]) == []


@pytest.mark.parametrize("width", [60, 80, 120])
def test_layers_view_keeps_long_names_whole(width):
    """MaxViT-length names (74 characters) get a line of their own rather than a cut."""
    from rich.console import Console

    from scopecli.model.layers import LayerInfo
    from scopecli.model.report import layers_table
    from scopecli.core.records import LayerLayout

    lay = LayerLayout("nchw", (0, 1, 2, 3), (56, 56), 0, "measured", True)
    names = ["blocks.0.layers.0.layers.MBconv.layers.squeeze_excitation.scale_activation", "stem.0"]
    table = [LayerInfo(n, "Hardsigmoid", 64, 56, 56, 224, 4, -96, True, lay, measured=True) for n in names]
    console = Console(width=width, soft_wrap=True)  # as the CLI prints
    with console.capture() as cap:
        console.print(layers_table("maxvit_t", table))
    text = cap.get()
    assert _whole_names(text, names) == []
    assert max(len(line) for line in text.splitlines()) <= max(width, len(names[0]) + 2)
