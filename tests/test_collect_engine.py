"""collect engine against brute force: top/bottom-k, locations, stats, probes, planted patterns, shards."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from collect_builders import collect_single_and_packed, loaded, model_input, noise_images, small_cnn
from scopecli.collect import CollectSettings, collect, merge_examples, merge_stats, open_source
from scopecli.collect.crops import crop_patch
from scopecli.core.sketch import RELATIVE_ACCURACY


def _brute_order(scores: np.ndarray, largest: bool) -> np.ndarray:
    """Images sorted best first by (score, lower index): scores [N]."""
    idx = np.arange(len(scores))
    return np.lexsort((idx, -scores if largest else scores))


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    arrays = noise_images(folder, 64, 24, seed=1)
    module = small_cnn(seed=3)
    model = loaded(module, 24)
    settings = CollectSettings(top_k=5, bottom_k=4, patch_size=16, probe=20, batch=10, workers=0, device="cpu")
    res = collect(model, open_source(folder), ["1", "2"], settings)
    acts, bound = _reference(module, model_input(arrays))
    return res, acts, arrays, bound


U32 = 2.0**-24  # float32 unit roundoff


def _reference(module: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Float64 activations of layers 1 and 2 and a bound on how far any float32 run may lie from them: a dot of
    n terms rounds by at most n*u*sum|w*x| in any order or kernel (Higham, Accuracy and Stability, 3.1), and an
    input error e reaches the output as |W|*e (ReLU passes no more). The engine runs other batches than a
    brute-force float32 pass would, and oneDNN picks kernels per batch size and CPU, so its float32 differs
    from any float32 reference by rounding: compare against this bound, not against what one CPU gives."""
    w1, b1, w2, b2 = (t.detach().double() for t in (module[0].weight, module[0].bias, module[2].weight,
                                                    module[2].bias))
    with torch.no_grad():
        xd = x.double()
        a1 = torch.relu(F.conv2d(xd, w1, b1, padding=1))
        e_in = 4 * U32 * xd.abs()  # the preprocess's own float32 rounding
        e1 = 28 * U32 * F.conv2d(xd.abs(), w1.abs(), b1.abs(), padding=1) + F.conv2d(e_in, w1.abs(), padding=1)
        a2 = F.conv2d(a1, w2, b2, stride=2, padding=1)
        e2 = (55 * U32 * F.conv2d(a1 + e1, w2.abs(), b2.abs(), stride=2, padding=1)
              + F.conv2d(e1, w2.abs(), stride=2, padding=1))
    return {"1": a1.numpy(), "2": a2.numpy()}, {"1": float(e1.max()), "2": float(e2.max())}


@pytest.mark.parametrize("layer", ["1", "2"])
def test_examples_equal_brute_force(run64, layer):
    res, acts, arrays, bound = run64
    a, tol = acts[layer], bound[layer]
    n, c, h, w = a.shape
    flat = a.reshape(n, c, h * w)
    for which, k, largest in (("top", 5, True), ("bottom", 4, False)):
        ex = res.examples[layer][which]
        assert ex.score.shape == (c, k)
        ext = flat.max(2) if largest else flat.min(2)
        for u in range(c):
            order = _brute_order(ext[:, u], largest)[:k]
            got = ex.image_index[u]
            assert len(set(got.tolist())) == k, (which, u)
            np.testing.assert_allclose(ex.score[u], ext[got, u], atol=tol, rtol=0)
            # the brute order but for near-ties: the engine ranks values each within tol of the reference, so
            # its j-th pick lies within 2*tol of the reference's j-th (the same image where gaps are wider)
            np.testing.assert_allclose(ext[got, u], ext[order, u], atol=2 * tol, rtol=0, err_msg=f"{which} {u}")
            at = flat[got, u, ex.loc[u, :, 0] * w + ex.loc[u, :, 1]]  # the reference at the reported places
            np.testing.assert_allclose(at, ext[got, u], atol=2 * tol, rtol=0, err_msg=f"{which} {u} loc")
            assert (got == order).mean() >= 0.5  # near-ties are rare: the comparison is not vacuous
    # table: sorted paths with hashes and sizes
    assert res.images.paths == [f"img_{i:03d}.png" for i in range(64)]
    assert all(len(s) == 64 for s in res.images.sha256)
    assert (res.images.width == 24).all() and (res.images.label == -1).all()


def test_patch_is_receptive_field_crop(run64):
    res, _, arrays, _ = run64
    ex = res.examples["2"]["top"]
    rec = {r.name: r for r in res.layers}["2"]
    assert (rec.rf_size, rec.rf_stride, rec.rf_start) == (5, 2, -2)
    u, j = 3, 0
    y, x = ex.loc[u, j]
    assert ex.box[u, j].tolist() == [-2 + 2 * x, -2 + 2 * y, 3 + 2 * x, 3 + 2 * y]
    img = arrays[ex.image_index[u, j]]
    # the shown window is the field shifted inside the 24 px input, and the patch its pixels at native size
    # (the field is 5 px, less than --patch-size 16): all image, no padding
    sx0, sy0, sx1, sy1 = ex.shown[u, j]
    assert (sx1 - sx0, sy1 - sy0) == (5, 5) and 0 <= sx0 and sx1 <= 24 and 0 <= sy0 and sy1 <= 24
    assert (sx0, sy0) == (min(max(-2 + 2 * x, 0), 19), min(max(-2 + 2 * y, 0), 19))
    assert np.array_equal(ex.patches[u][j], img[sy0:sy1, sx0:sx1])
    assert np.array_equal(ex.patches[u][j], crop_patch(img, ex.shown[u, j], 5))


@pytest.mark.parametrize("layer", ["1", "2"])
def test_stats_agree_with_numpy(run64, layer):
    res, acts, _, bound = run64
    a, tol = acts[layer].astype(np.float64), bound[layer]  # every engine value within tol of its reference
    per_unit = a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
    st = res.stats[layer]
    assert (st.count == per_unit.shape[1]).all()
    np.testing.assert_allclose(st.mean, per_unit.mean(1), rtol=1e-5, atol=tol)
    np.testing.assert_allclose(st.std, per_unit.std(1), rtol=1e-5, atol=2 * tol)
    np.testing.assert_allclose(st.min, per_unit.min(1), rtol=0, atol=tol)
    np.testing.assert_allclose(st.max, per_unit.max(1), rtol=0, atol=tol)
    unsure = (np.abs(per_unit) <= tol).mean(1)  # values this close to 0 may take either sign in float32
    assert (np.abs(st.frac_pos - (per_unit > 0).mean(1)) <= unsure).all()
    true_q = np.quantile(per_unit, [0.5, 0.9, 0.99, 0.999], axis=1, method="lower").T
    # an order statistic moves no further than the values do (tol), then the sketch's own accuracy
    bound = (np.abs(true_q) + tol) * RELATIVE_ACCURACY + 2.0**-16 + tol
    assert (np.abs(st.quantiles - true_q) <= bound).all()


def test_probe_is_spatial_mean_of_first_images(run64):
    res, acts, _, _ = run64
    for layer in ("1", "2"):
        pb = res.probe[layer]
        assert pb.image_index.tolist() == list(range(20))
        assert pb.acts.dtype == np.float16
        np.testing.assert_allclose(pb.acts.astype(np.float32), acts[layer][:20].mean((2, 3)), rtol=2e-3, atol=2e-3)


def test_planted_pattern_found_at_true_location(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(7)
    pattern = np.array([[1 if (i == 3 or j == 3) else -1 for j in range(7)] for i in range(7)], dtype=np.float32)
    size, n = 48, 24
    planted = {3: (10, 30), 11: (37, 8), 20: (24, 24)}  # image -> (y, x) centre
    for i in range(n):
        img = np.clip(128 + rng.normal(0, 12, (size, size, 3)), 0, 255)
        if i in planted:
            y, x = planted[i]
            img[y - 3 : y + 4, x - 3 : x + 4] = (128 + 110 * pattern)[:, :, None]
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"p{i:02d}.png")
    conv = nn.Conv2d(3, 1, 7, padding=3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.repeat(pattern[None, None], 3, axis=1)))
    model = loaded(nn.Sequential(conv), size, "detector")
    res = collect(model, open_source(tmp_path), ["0"], CollectSettings(top_k=3, bottom_k=0, patch_size=28, probe=0,
                                                                       batch=5, workers=0, device="cpu"))
    ex = res.examples["0"]["top"]
    assert sorted(ex.image_index[0].tolist()) == sorted(planted)
    for j in range(3):
        y, x = planted[int(ex.image_index[0, j])]
        assert ex.loc[0, j].tolist() == [y, x]
        assert ex.box[0, j].tolist() == [x - 3, y - 3, x + 4, y + 4]
        patch = ex.patches[0][j].astype(int)  # the 7 px field at native size (less than --patch-size 28)
        assert np.array_equal(patch[:, :, 0] > 128, pattern > 0)
        # the heatmap around the winner peaks at the planted centre
        oy, ox = ex.heat_origin[0, j]
        hy, hx = np.unravel_index(np.nanargmax(ex.heat[0, j]), ex.heat[0, j].shape)
        assert (oy + hy, ox + hx) == (y, x)


def test_shards_merge_to_single_run(tmp_path):
    arrays = noise_images(tmp_path, 37, 20, seed=5)
    model = loaded(small_cnn(seed=4), 20)
    base = dict(top_k=4, bottom_k=3, patch_size=12, probe=9, batch=6, workers=0, device="cpu")
    single = collect(model, open_source(tmp_path), ["1", "2"], CollectSettings(**base))
    shards = [collect(model, open_source(tmp_path), ["1", "2"], CollectSettings(**base, shard=(k, 3))) for k in (1, 2, 3)]
    assert sum(len(s.images) for s in shards) == 37
    assert sum((s.images.paths for s in shards), []) == single.images.paths
    offsets = np.cumsum([0] + [len(s.images) for s in shards])
    for layer in ("1", "2"):
        for which in ("top", "bottom"):
            merged = None
            for s, off in zip(shards, offsets):
                ex = s.examples[layer][which]
                ex.image_index = np.where(ex.image_index >= 0, ex.image_index + off, -1)
                merged = ex if merged is None else merge_examples(merged, ex, which == "top")
            want = single.examples[layer][which]
            np.testing.assert_array_equal(merged.image_index, want.image_index)
            np.testing.assert_array_equal(merged.score, want.score)
            np.testing.assert_array_equal(merged.loc, want.loc)
            np.testing.assert_array_equal(merged.box, want.box)
            assert all(np.array_equal(p, q) for r1, r2 in zip(merged.patches, want.patches) for p, q in zip(r1, r2))
        st = merge_stats(merge_stats(shards[0].stats[layer], shards[1].stats[layer]), shards[2].stats[layer])
        want = single.stats[layer]
        np.testing.assert_array_equal(st.sketch["hist"], want.sketch["hist"])
        np.testing.assert_array_equal(st.count, want.count)
        np.testing.assert_array_equal(st.quantiles, want.quantiles)
        np.testing.assert_array_equal(st.frac_pos, want.frac_pos)
        np.testing.assert_array_equal(st.min, want.min)
        np.testing.assert_array_equal(st.max, want.max)
        np.testing.assert_allclose(st.mean, want.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.std, want.std, rtol=1e-12, atol=1e-12)
        probes = [s.probe[layer] for s in shards if layer in s.probe]
        got = np.concatenate([p.image_index + off for p, off in zip(probes, offsets)])
        np.testing.assert_array_equal(got, single.probe[layer].image_index)
        np.testing.assert_array_equal(np.concatenate([p.acts for p in probes]), single.probe[layer].acts)


def test_cli_shards_then_pack_equal_single_collect(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact

    data = tmp_path / "data"
    noise_images(data, 14, 40, seed=2)
    common = ["collect", "tinymodels:tiny_cnn", "--data", data, "--top-k", 3, "--bottom-k", 2, "--batch", 4,
              "--probe", 6, "--patch-size", 16, "--workers", 0, "--quiet", "--lossless"]
    single, packed = collect_single_and_packed(scope_cli, common, tmp_path)
    with open_artifact(single) as a, open_artifact(packed) as b:
        assert a.dataset.paths == b.dataset.paths and a.dataset.sha256 == b.dataset.sha256
        assert list(a.layers) == list(b.layers) and len(a.layers) > 0
        for layer in a.layers:
            for which in ("top", "bottom"):
                ea, eb = a.examples(layer, which), b.examples(layer, which)
                for f in ("units", "score", "image_index", "loc", "box"):
                    np.testing.assert_array_equal(getattr(ea, f), getattr(eb, f))
                for ra, rb in zip(ea.patches, eb.patches):
                    assert all(np.array_equal(p, q) for p, q in zip(ra, rb))
            for which in ("top", "bottom"):  # heatmaps and shown windows too (the streaming top-k's own state)
                ra, rb = a.section(layer, "examples").set(which), b.section(layer, "examples").set(which)
                assert set(ra.extra) == set(rb.extra) == {"shown", "heat", "heat_range", "heat_origin"}
                for name in ra.extra:
                    np.testing.assert_array_equal(ra.extra[name], rb.extra[name])
            sa, sb = a.stats(layer), b.stats(layer)
            np.testing.assert_array_equal(sa.quantiles, sb.quantiles)
            np.testing.assert_array_equal(sa.sketch["hist"], sb.sketch["hist"])
            np.testing.assert_allclose(sa.std, sb.std, rtol=1e-12)
            pa, pb = a.probe(layer), b.probe(layer)
            np.testing.assert_array_equal(pa.image_index, pb.image_index)
            np.testing.assert_array_equal(pa.acts, pb.acts)
