"""Reproducible GPU renders: the gather warp equals grid_sample, and `reproducible` sets and restores torch's
deterministic switches (checked without a GPU: the switches exist on every build; scripts/check_render_determinism.py
measures the pixels on a real GPU)."""

import math

import pytest
import torch
import torch.nn.functional as F
import torch.utils.deterministic

from scopecli.render import transforms as tf
from scopecli.render.reproducible import reproducible

MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
FAST = ["--steps", "4", "--size", "32", "--batch", "2", "--device", "cpu", "--quiet"]


def _theta(n, seed, zoom, angle_deg=0.0, shift=0.0):
    theta = tf.affine_matrices(tf.draw(torch.Generator().manual_seed(seed), n), 32)
    a = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    theta[0, :, :2] = rot * zoom  # one sample: a chosen zoom and rotation
    theta[1, :, 2] += shift  # one sample: shifted past the border
    return theta


@pytest.mark.parametrize("shape, zoom, angle, shift", [
    ((4, 3, 32, 32), 1.1, 10.0, 0.7),  # the render's transforms
    ((3, 2, 17, 29), 1.8, 45.0, -0.9),  # zoomed out: many samples outside the image
    ((2, 3, 24, 24), 0.4, 30.0, 0.3),  # zoomed in: each input pixel feeds many outputs
])
def test_splat_is_grid_samples_gradient(shape, zoom, angle, shift):
    n, c, h, w = shape
    torch.manual_seed(sum(shape))
    images = torch.rand(shape, requires_grad=True)
    grid = F.affine_grid(_theta(n, n + w, zoom, angle, shift), [n, c, h, w], align_corners=False)
    want = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    upstream = torch.randn_like(want)
    (g_want,) = torch.autograd.grad((want * upstream).sum(), images)
    got = tf.splat_bilinear(upstream, grid, images.shape)
    assert torch.allclose(got, g_want, atol=1e-4), float((got - g_want).abs().max())
    assert (want == 0).any() and g_want.abs().sum() > 0


def test_reproducible_warp_passes_gradcheck():
    torch.manual_seed(0)
    images = torch.rand(2, 2, 9, 11, dtype=torch.float64, requires_grad=True)
    grid = F.affine_grid(_theta(2, 5, 0.8, 20.0, 0.2).double(), [2, 2, 9, 11], align_corners=False)
    assert torch.autograd.gradcheck(lambda x: tf._ReproducibleWarp.apply(x, grid), (images,), atol=1e-4)


def _switches():
    cudnn = torch.backends.cudnn
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn.deterministic, cudnn.benchmark, tf.REPRODUCIBLE_WARP.get(),
            torch.utils.deterministic.fill_uninitialized_memory)


def test_reproducible_sets_the_switches_on_cuda_and_restores_them():
    before = _switches()
    torch.backends.cudnn.benchmark = True
    try:
        with reproducible(torch.device("cuda")):
            assert _switches() == (True, True, True, False, True, False)
        assert _switches()[:3] == before[:3] and _switches()[4:] == before[4:] and torch.backends.cudnn.benchmark
        with pytest.raises(KeyError):
            with reproducible(torch.device("cuda")):
                raise KeyError("boom")
        assert _switches()[:3] == before[:3] and _switches()[4:] == before[4:] and torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before[3]


@pytest.mark.parametrize("device, enabled", [("cpu", True), ("cuda", False)])
def test_reproducible_changes_nothing_on_cpu_or_when_off(device, enabled):
    before = _switches()
    with reproducible(torch.device(device), enabled):
        assert _switches() == before


def test_warp_inside_the_context_has_grid_samples_values_and_gradient(monkeypatch):
    calls = []
    splat = tf.splat_bilinear
    monkeypatch.setattr(tf, "splat_bilinear", lambda *a: calls.append(1) or splat(*a))
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    theta = tf.affine_matrices(tf.draw(torch.Generator().manual_seed(3), 2), 16)
    plain = tf.warp(images, theta)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), images)
    with reproducible(torch.device("cuda")):  # switches only: the tensors stay on the CPU
        inside = tf.warp(images, theta)
        (g_inside,) = torch.autograd.grad(inside.square().sum(), images)
    assert torch.equal(inside, plain)
    assert calls == [1]  # the gradient inside came from the splat (outside: grid_sample's own backward)
    assert torch.allclose(g_inside, g_plain, atol=1e-5)


def test_a_render_through_the_reproducible_warp_repeats_exactly_and_matches_the_plain_one():
    from tinymodels import tiny_cnn

    from scopecli.render import RenderSettings, RenderTarget, render_units

    model = tiny_cnn()
    targets = [RenderTarget("2", u) for u in range(3)]
    settings = RenderSettings(steps=3, size=32, batch=3, device="cpu", robust_samples=2)

    def images():
        result = render_units(model, targets, settings, normalize=lambda x: x, fingerprint="tiny")
        return [rec.image.astype(int) for _, rec in result.records]

    plain = images()
    token = tf.REPRODUCIBLE_WARP.set(True)
    try:
        first, second = images(), images()
    finally:
        tf.REPRODUCIBLE_WARP.reset(token)
    assert all((a == b).all() for a, b in zip(first, second))
    assert max(abs(a - b).max() for a, b in zip(first, plain)) <= 2  # the same render up to float rounding


def test_fast_kernels_flag_is_recorded(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    out = tmp_path / "tiny.h5"
    assert scope_cli("render", *MODEL, "--layer", "2", "--units", "0", *FAST, "-o", out).code == 0
    assert scope_cli("render", *MODEL, "--layer", "5", "--units", "0", *FAST, "--fast-kernels", "-o", out).code == 0
    with open_artifact(out) as art:
        flags = [run["params"]["deterministic"] for run in art.provenance if run.get("command") == "render"]
    assert flags == [True, False]
