"""The activation sample (`collect --sample N`): the N smallest keys of all positions, vectors equal to the
captured activations, shard-independent, merged exactly by `scope pack`, resumable."""

import numpy as np
import pytest
import torch

from collect_builders import collect_single_and_packed, loaded, model_input, noise_images, small_cnn
from conftest import assert_one_line_error
from scopecli.collect import CollectSettings, collect, open_source
from scopecli.collect.sample import StreamingSample
from scopecli.core.sketch import position_keys


def _brute_sample(paths, acts: np.ndarray, n: int, seed: int):
    """(keys, image, (row, col), vectors) of the n smallest keys over every position: acts [N, C, H, W]."""
    N, C, H, W = acts.shape
    keys = np.concatenate([position_keys(seed, p, H * W) for p in paths])
    img = np.repeat(np.arange(N), H * W)
    pos = np.tile(np.arange(H * W), N)
    order = np.lexsort((pos, img, keys))[:n]
    vec = acts.reshape(N, C, H * W).transpose(0, 2, 1).reshape(N * H * W, C)[order]
    return keys[order], img[order], np.stack([pos[order] // W, pos[order] % W], 1), vec


def test_sample_is_the_smallest_keys_with_the_captured_vectors(tmp_path):
    arrays = noise_images(tmp_path, 23, 20, seed=4)
    module = small_cnn(seed=2)
    model = loaded(module, 20)
    settings = CollectSettings(top_k=2, bottom_k=0, patch_size=16, probe=0, batch=5, workers=0, device="cpu",
                               sample=150, seed=7)
    res = collect(model, open_source(tmp_path), ["0", "2"], settings)
    with torch.no_grad():
        x = model_input(arrays)
        acts = {"0": module[0](x).numpy(), "2": module[2](module[1](module[0](x))).numpy()}
    for layer in ("0", "2"):
        s = _sample_of(res, layer)
        keys, img, pos, vec = _brute_sample(res.images.paths, acts[layer], 150, 7)
        assert len(s) == 150 and s.seed == 7 and s.population == acts[layer][:, 0].size
        np.testing.assert_array_equal(s.keys, keys)
        np.testing.assert_array_equal(s.image_index, img)
        np.testing.assert_array_equal(s.positions, pos)
        # within one float16 step: collect's batches of 5 and this one batch of 23 may round differently in the
        # last float32 bit (kernels differ per batch size on some CPUs), which can flip a float16 rounding
        np.testing.assert_allclose(s.vectors16.astype(np.float32), vec.astype(np.float16).astype(np.float32),
                                   rtol=2.0 ** -10, atol=2.0 ** -24)
        assert s.vectors.dtype == np.float32
    # another seed draws another sample
    settings.seed = 8
    other = collect(model, open_source(tmp_path), ["0"], settings)
    assert not np.array_equal(_sample_of(other, "0").keys, _sample_of(res, "0").keys)


def _sample_of(res, layer):
    return res.extra[layer]["sample"]


def test_sample_keeps_everything_when_n_exceeds_the_positions(tmp_path):
    noise_images(tmp_path, 3, 16, seed=1)
    res = collect(loaded(small_cnn(), 16), open_source(tmp_path), ["2"],
                  CollectSettings(top_k=1, bottom_k=0, probe=0, batch=2, workers=0, device="cpu", sample=10_000))
    s = _sample_of(res, "2")
    assert len(s) == 3 * 8 * 8 == s.population and s.size == 10_000
    assert len({(int(i), int(r), int(c)) for i, (r, c) in zip(s.image_index, s.positions)}) == len(s)


def test_streaming_sample_resumes_from_its_arrays_exactly():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(9, 4, 6, generator=g)
    paths = [f"p{i}.png" for i in range(9)]
    whole, first = StreamingSample(4, 10, 1), StreamingSample(4, 10, 1)
    whole.observe(a[:4], np.arange(4), paths[:4])
    whole.observe(a[4:], np.arange(4, 9), paths[4:])
    first.observe(a[:4], np.arange(4), paths[:4])
    resumed = StreamingSample(4, 10, 1)
    resumed.load_state_arrays(first.state_arrays())
    resumed.observe(a[4:], np.arange(4, 9), paths[4:])
    for key in ("keys", "image", "pos", "vectors", "population"):
        np.testing.assert_array_equal(whole.state_arrays()[key], resumed.state_arrays()[key])
    with pytest.raises(ValueError):
        StreamingSample(5, 10, 1).load_state_arrays(first.state_arrays())


def test_two_shards_then_pack_equal_one_run_exactly(tmp_path, scope_cli):
    from scopecli.artifact import open_artifact
    from scopecli.artifact.validate import validate

    data = tmp_path / "data"
    noise_images(data, 15, 32, seed=5)
    common = ["collect", "tinymodels:tiny_cnn", "--data", data, "--top-k", 2, "--bottom-k", 1, "--batch", 4,
              "--probe", 0, "--patch-size", 16, "--workers", 0, "--quiet", "--sample", 300, "--seed", 3]
    single, packed = collect_single_and_packed(scope_cli, common, tmp_path)
    assert validate(packed) == []
    with open_artifact(single) as a, open_artifact(packed) as b, \
            open_artifact(tmp_path / "s1.h5") as s1:
        assert list(a.layers) and list(a.layers) == list(b.layers)
        for layer in a.layers:
            sa, sb = a.sample(layer), b.sample(layer)
            assert len(sa) == min(300, sa.population) and len(sa) > 0
            assert (sa.seed, sa.size, sa.population) == (sb.seed, sb.size, sb.population) == (3, 300, sa.population)
            for f in ("keys", "vectors16", "image_index", "positions"):
                np.testing.assert_array_equal(getattr(sa, f), getattr(sb, f))
            assert sa.vectors.dtype == np.float32 and sa.positions.shape == (len(sa), 2)
            # a shard alone holds another (smaller-population) sample: the merge did real work
            assert s1.sample(layer).population < sa.population
        assert a.info()["layers"][0]["sample"] == len(a.sample(a.layers[0]))
    # packing a shard with a sample of another seed is a conflict, said in one line
    r = scope_cli(*common[:-2], "--seed", 4, "--shard", "2/2", "-o", tmp_path / "s2b.h5")
    assert r.code == 0, r.stderr
    r = scope_cli("pack", tmp_path / "s1.h5", tmp_path / "s2b.h5", "-o", tmp_path / "bad.h5", "--quiet")
    assert_one_line_error(r, contains="seed")


def test_bad_sample_size_is_one_line(tmp_path, scope_cli):
    noise_images(tmp_path / "d", 2, 16)
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", tmp_path / "d", "--sample", -1, "--quiet",
                  "-o", tmp_path / "x.h5")
    assert_one_line_error(r, contains="--sample")
