"""render building blocks: parameterizations, per-sample transforms, redirected ReLU, objective algebra."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.render import transforms as tf
from scopecli.render.objectives import Diversity, RenderTarget, UnitScore, batch_objectives, channel
from scopecli.render.param import make_param, spectrum_from_images
from scopecli.render.redirect import RedirectedReLU


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("kind", ["fft", "pixel", "maco"])
def test_param_gives_valid_images_and_rows_depend_only_on_their_generator(kind):
    a = make_param(kind, 24, gens(1, 2, 3))().detach()
    b = make_param(kind, 24, gens(9, 2))().detach()
    assert a.shape == (3, 3, 24, 24)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a[1], b[1])  # same seed, same start, whatever the batch
    assert not torch.equal(a[0], b[0])


def test_fft_param_starts_near_gray_and_changes_low_frequencies_first():
    p = make_param("fft", 32, gens(0))
    img = p().detach()
    assert abs(float(img.mean()) - 0.5) < 0.05
    # an equal step on every coefficient moves the image mostly at low frequency (1/f scaling)
    with torch.no_grad():
        p.raw.add_(0.05)
    delta = (p().detach() - img)[0].mean(0)
    spec = torch.fft.rfft2(delta).abs()
    assert float(spec[0, 0]) > 10 * float(spec[8:24, 8:].mean())


def test_odd_size_works_for_every_param():
    for kind in ("fft", "pixel", "maco"):
        assert make_param(kind, 17, gens(0))().shape == (1, 3, 17, 17)


def test_maco_spectrum_from_user_images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    mag = spectrum_from_images(tmp_path, 16)
    assert mag.shape == (3, 16, 9) and np.isfinite(mag).all() and mag.max() > 0
    img = make_param("maco", 16, gens(0, 1), magnitude=mag)()
    assert img.shape == (2, 3, 16, 16)
    # the magnitude is fixed: only the phase is a parameter
    p = make_param("maco", 16, gens(0), magnitude=mag)
    assert [n for n, _ in p.named_parameters()] == ["raw"]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ScopeError, match="no images"):
        spectrum_from_images(tmp_path / "nothing", 16)
    with pytest.raises(ScopeError, match="not a directory"):
        spectrum_from_images(tmp_path / "missing", 16)


def test_unknown_param_is_a_clear_error():
    with pytest.raises(ScopeError, match="choose one of"):
        make_param("wavelet", 16, gens(0))


def test_transform_draws_are_per_sample_and_batch_independent():
    g1, g2 = gens(5, 6)
    u = torch.stack([tf.draw(g1, 10), tf.draw(g2, 10)], dim=1)  # (steps, batch, 6)
    (g_alone,) = gens(6)
    assert torch.equal(u[:, 1], tf.draw(g_alone, 10))
    theta = tf.affine_matrices(u, 64)
    assert theta.shape == (10, 2, 2, 3)
    assert not torch.allclose(theta[:, 0], theta[:, 1])  # each sample its own transform
    # scales and angles within Lucid's ranges
    lin = theta[..., :2]
    det = torch.det(lin)  # zoom^2 = (window/size)^2
    zoom = det.sqrt()
    window_min = (64 + 24 - 12) / 1.1 / 64
    window_max = (64 + 24 - 12) / 0.9 / 64
    assert float(zoom.min()) >= window_min - 1e-5 and float(zoom.max()) <= window_max + 1e-5
    angle = torch.atan2(lin[..., 1, 0], lin[..., 0, 0]).abs().max()
    assert float(angle) <= math.radians(10) + 1e-5


def test_identity_transform_keeps_the_image_and_padding_is_gray():
    img = torch.rand(2, 3, 16, 16)
    theta = tf.affine_matrices(torch.rand(2, tf.N_DRAWS), 16, tf.NO_TRANSFORM)
    assert torch.allclose(tf.warp(img, theta), img, atol=1e-5)
    shrink = torch.tensor([[[2.0, 0, 0], [0, 2.0, 0]]]).repeat(2, 1, 1)  # view a window twice the image
    out = tf.warp(img, shrink)
    assert torch.allclose(out[:, :, 0, 0], torch.full((2, 3), 0.5))


def test_redirected_relu_same_forward_and_revives_dead_samples():
    x = torch.tensor([[-1.0, -2.0, -0.5], [1.0, -1.0, 2.0]], requires_grad=True)
    w = torch.tensor([1.0, -1.0, 1.0])
    with RedirectedReLU():
        y = F.relu(x)
    assert torch.equal(y, torch.relu(x.detach()))
    (-(y * w).sum()).backward()  # minimize -score: descent pushes y along w
    g = x.grad
    # row 0 is dead (all inputs negative): redirected gradient lets through only the components
    # that push inputs up (w > 0 -> grad < 0), blocks the one that would push further down
    assert g[0].tolist() == [-1.0, 0.0, -1.0]
    # row 1 is alive: the true ReLU gradient, unchanged
    assert g[1].tolist() == [-1.0, 0.0, -1.0]
    x2 = x.detach().clone().requires_grad_(True)
    (-(torch.relu(x2) * w).sum()).backward()
    assert x2.grad[0].abs().sum() == 0  # without the mode the dead row gets nothing


@pytest.mark.parametrize(
    "call",
    [
        lambda x: nn.ReLU()(x),
        lambda x: nn.ReLU(inplace=True)(x * 1),
        lambda x: F.relu(x),
        lambda x: torch.relu(x),
        lambda x: x.relu(),
        lambda x: nn.ReLU6()(x),
        lambda x: F.relu6(x),
    ],
)
def test_every_relu_spelling_is_redirected(call):
    x = torch.full((2, 4), -3.0, requires_grad=True)
    with RedirectedReLU():
        y = call(x)
    assert torch.equal(y, torch.zeros(2, 4))
    (-y.sum()).backward()
    assert float(x.grad.abs().sum()) > 0


def test_relu6_redirect_lets_saturated_units_come_down():
    x = torch.tensor([[7.0, 8.0]], requires_grad=True)
    with RedirectedReLU():
        y = nn.ReLU6()(x)
    (y.sum()).backward()  # minimizing y: pushes saturated inputs down
    assert x.grad.tolist() == [[1.0, 1.0]]
    x.grad = None
    with RedirectedReLU():
        y = nn.ReLU6()(x)
    (-y.sum()).backward()  # pushing further up past 6 stays blocked
    assert x.grad.tolist() == [[0.0, 0.0]]


def test_objectives_compose():
    acts = {"a": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)}
    c = channel("a", 1, row=0, batch=2)
    assert torch.allclose(c(acts), torch.tensor([acts["a"][0, 1].mean(), 0.0]))
    combo = c - 0.5 * c + UnitScore("neuron", "a", [1], [2], 2)
    expected = torch.tensor([0.5 * float(acts["a"][0, 1].mean()), float(acts["a"][1, 2, 1, 1])])
    assert torch.allclose(combo(acts), expected)
    assert torch.allclose((-c)(acts), -c(acts))
    assert sum([c, c])(acts)[0] == 2 * c(acts)[0]
    dd = UnitScore("deepdream", "a", [0, 1], [], 2)(acts)
    assert torch.allclose(dd, acts["a"].pow(2).flatten(1).mean(1))


def test_batch_objectives_signs_and_diversity_groups():
    acts = {"a": torch.rand(4, 3, 4, 4) + 0.1, "b": torch.rand(4, 5)}
    targets = [RenderTarget("a", 1, "negative"), RenderTarget("b", 2, "channel"),
               RenderTarget("a", 0, "channel", 0), RenderTarget("a", 0, "channel", 1)]
    objective, measure = batch_objectives(targets)
    m = measure(acts)
    assert torch.allclose(m[:2], torch.stack([acts["a"][0, 1].mean(), acts["b"][1, 2]]))
    o = objective(acts)
    assert torch.allclose(o[0], -m[0]) and torch.allclose(o[1], m[1])
    # rows 2, 3 form a diversity group: penalized (cosine similarity of non-negative Grams > 0)
    assert bool((o[2:] < m[2:]).all())
    div = Diversity("a", [[2, 3]], 4)(acts)
    assert div[0] == 0 and div[1] == 0 and bool((div[2:] < 0).all())


def test_an_objective_is_one_decorated_function():
    from scopecli.render import objectives as reg
    from scopecli.render.engine import plan_targets

    try:
        @reg.objective("spatial_max", "largest position")
        def spatial_max(unit_acts):
            return unit_acts.float().flatten(1).amax(dim=1)

        assert "spatial_max" in reg.OBJECTIVES and "spatial_max (largest position)" in reg.objectives_help()
        targets = plan_targets({"a": [1, 2]}, "spatial_max")
        objective, measure = batch_objectives(targets)
        acts = {"a": torch.rand(2, 3, 4, 4)}
        assert torch.equal(measure(acts), torch.stack([acts["a"][0, 1].max(), acts["a"][1, 2].max()]))
        assert torch.equal(objective(acts), measure(acts))
        with pytest.raises(ValueError, match="already registered"):
            reg.objective("spatial_max", "again")(spatial_max)
    finally:
        reg.OBJECTIVE_KINDS.pop("spatial_max", None)
    assert "spatial_max" not in reg.OBJECTIVES
    assert list(reg.OBJECTIVES) == ["channel", "neuron", "negative", "deepdream", "direction", "direction-cos"]


def test_a_parameterization_is_one_registered_class():
    from scopecli.render import param as reg

    try:
        @reg.parameterization("grey", "one channel")
        class GreyParam(reg.ImageParam):
            def __init__(self, size, generators):
                super().__init__(size)
                self.raw = nn.Parameter(torch.stack([torch.rand(1, size, size, generator=g) for g in generators]))

            def forward(self):
                return self.raw.expand(-1, 3, -1, -1)

        assert "grey" in reg.PARAMS and "grey (one channel)" in reg.params_help()
        p = make_param("grey", 8, gens(0, 1), magnitude=np.zeros((3, 8, 5), np.float32))  # not its option: ignored
        assert isinstance(p, GreyParam) and p.kind == "grey" and p().shape == (2, 3, 8, 8)
    finally:
        reg.PARAMETERIZATIONS.pop("grey", None)
    assert list(reg.PARAMS) == ["fft", "pixel", "maco"]


def test_render_help_lists_the_registries(scope_cli):
    from scopecli.render.objectives import OBJECTIVE_KINDS
    from scopecli.render.param import PARAMETERIZATIONS

    r = scope_cli("render", "--help")
    assert r.code == 0
    text = " ".join(r.stdout.replace("│", " ").split())
    for kind in OBJECTIVE_KINDS.values():
        assert f"{kind.name} ({kind.help})" in text
    for name, cls in PARAMETERIZATIONS.items():
        assert f"{name} ({cls.help})" in text
