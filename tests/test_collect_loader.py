"""collect's loaders and lazy patches: the kind of loader never changes a batch, and a patch cut when read is
the patch `crop_patches` cuts."""

import threading

import numpy as np
import pytest
import torch

from collect_builders import loaded, noise_images, small_cnn
from scopecli.collect import CollectSettings, collect, open_source
from scopecli.collect.crops import PatchRows, crop_patches
from scopecli.core.errors import ScopeError
from scopecli.data.dataset import ModelInputs
from scopecli.data.loader import ThreadLoader, make_loader


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    noise_images(folder, 23, 20, seed=4)
    (folder / "img_bad.png").write_bytes(b"not a png at all")
    return folder


def _batches(loader) -> list[dict]:
    return [{k: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for k, v in b.items()} for b in loader]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_thread_loader_gives_the_dataloaders_batches(folder, threads):
    source = open_source(folder)
    ds = ModelInputs(source.files, range(len(source)), 20, 16)
    want = _batches(make_loader(ds, 5, 0, False, kind="processes"))
    got = _batches(make_loader(ds, 5, threads, False, kind="threads"))
    _same(got, want)
    assert [int(i) for b in got for i in b["index"]] == list(range(len(source)))  # in order, every image once
    bad = [r for b in got for r, ok in zip(b["reason"], b["ok"]) if not ok]
    assert len(bad) == 1 and bad[0]  # the broken file keeps its place with its reason
    assert len(ThreadLoader(ds, 5, threads)) == len(want)


def test_thread_loader_stops_its_threads_when_abandoned(folder):
    source = open_source(folder)
    ds = ModelInputs(source.files, range(len(source)), 20, 16)
    before = {t.name for t in threading.enumerate()}
    it = iter(ThreadLoader(ds, 2, 2))
    next(it)
    it.close()  # a run that fails in its first batch
    left = {t.name for t in threading.enumerate()} - before
    assert not [name for name in left if name.startswith("scope-decode")]


def test_unknown_loader_kind_is_refused():
    with pytest.raises(ScopeError, match="--loader must be one of threads, processes"):
        CollectSettings(loader="fork").check()
    with pytest.raises(ValueError):
        make_loader([], 1, 0, False, kind="fork")


def test_collect_is_the_same_with_either_loader(folder):
    model = loaded(small_cnn(seed=2), 20)
    source = open_source(folder)
    runs = [collect(model, source, ["1", "2"], CollectSettings(top_k=3, bottom_k=2, patch_size=8, probe=10, batch=4,
                                                                workers=w, loader=kind, device="cpu"))
            for kind, w in (("processes", 0), ("threads", 2), ("processes", 1))]
    first = runs[0]
    for other in runs[1:]:
        assert other.images.paths == first.images.paths and other.images.sha256 == first.images.sha256
        for layer in ("1", "2"):
            for which in ("top", "bottom"):
                a, b = first.examples[layer][which], other.examples[layer][which]
                assert np.array_equal(a.image_index, b.image_index) and np.array_equal(a.score, b.score)
                for ra, rb in zip(a.patches, b.patches):
                    for pa, pb in zip(ra, rb):
                        assert (pa is None and pb is None) or np.array_equal(pa, pb)
            assert np.array_equal(first.stats[layer].sketch["hist"], other.stats[layer].sketch["hist"])


@pytest.mark.parametrize("side,size,dtype", [(9, 9, np.uint8), (5, 12, np.uint8), (7, 10, np.uint8),
                                             (30, 8, np.uint8), (30, 8, np.uint16), (6, 9, np.uint16)])
def test_patch_rows_cut_what_crop_patches_cuts(side, size, dtype):
    rng = np.random.default_rng(side * 100 + size)
    top = 65535 if dtype == np.uint16 else 255
    pictures = rng.integers(0, top + 1, (6, 24, 24, 3)).astype(dtype)
    units, k = 7, 4
    which = rng.integers(0, 6, (units, k))
    which[rng.random((units, k)) < 0.25] = -1  # missing examples
    x0 = rng.integers(-side // 2, 24 - side // 2, (units, k))  # some windows leave the picture
    y0 = rng.integers(-side // 2, 24 - side // 2, (units, k))
    boxes = np.stack([x0, y0, x0 + side, y0 + side], -1)
    rows = PatchRows(pictures, which, boxes, size)
    have = which >= 0
    flat = crop_patches(pictures, which[have], boxes[have], size)
    want = iter(flat)
    assert len(rows) == units
    for u in range(units):
        row = rows[u]
        assert len(row) == k
        for j in range(k):
            if have[u, j]:
                patch = row[j]
                assert patch.dtype == dtype and patch.shape == (size, size, 3)
                assert np.array_equal(patch, next(want))
            else:
                assert row[j] is None
    assert [len(list(r)) for r in rows] == [k] * units


def test_patch_rows_without_examples():
    rows = PatchRows(None, np.full((3, 2), -1), np.zeros((3, 2, 4), np.int64), 8)
    assert len(rows) == 3 and all(p is None for r in rows for p in r)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """Smooth photo-like JPEGs of several sizes, one PNG and one broken file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(9)
    for i, (w, h) in enumerate([(40, 30), (30, 44), (64, 64), (33, 25), (50, 36), (28, 28), (45, 60), (36, 36)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (3 + i)) , np.cos(yy / (4 + i)), np.sin((xx + yy) / 5)], -1)
        pic = ((base + 1) * 100 + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pic).save(folder / f"p{i}.jpg", quality=92)
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "q.png")
    (folder / "z.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    return folder


def test_device_decode_matches_the_cpu_path(jpegs):
    """--decode device (torchvision's decoder; on a GPU, nvJPEG) gives the image table of the Pillow path and
    activations within JPEG decoding tolerance."""
    from scopecli.collect import engine

    model = loaded(small_cnn(seed=5), 24)
    model.preprocess.resize, model.preprocess.crop = 26, 24
    source = open_source(jpegs)
    base = dict(top_k=3, bottom_k=2, patch_size=8, probe=10, batch=4, workers=1, device="cpu")
    cpu = collect(model, source, ["1", "2"], CollectSettings(decode="cpu", **base))
    dev = collect(model, source, ["1", "2"], CollectSettings(decode="device", **base))
    assert dev.timings["decode"] == "device" and cpu.timings["decode"] == "cpu"
    assert dev.images.paths == cpu.images.paths and dev.images.sha256 == cpu.images.sha256
    assert np.array_equal(dev.images.width, cpu.images.width) and np.array_equal(dev.images.height, cpu.images.height)
    assert [p for p, _ in dev.images.skipped] == [p for p, _ in cpu.images.skipped] == ["z.jpg"]
    for layer in ("1", "2"):
        a, b = cpu.stats[layer], dev.stats[layer]
        scale = np.abs(a.max).max()
        assert np.allclose(a.max, b.max, atol=0.01 * scale) and np.allclose(a.min, b.min, atol=0.01 * scale)
        assert np.allclose(a.mean, b.mean, atol=0.005 * scale)  # a BGR or shifted decode: 5-15 % off
        assert np.array_equal(a.count, b.count)  # every position of every usable image counted


def test_device_decode_refuses_inputs_it_cannot_make():
    from scopecli.collect.engine import decode_on_device

    model = loaded(small_cnn(seed=5), 24)
    model.preprocess.bit_depth = 16
    with pytest.raises(ScopeError, match="--decode device needs an 8-bit RGB model input"):
        decode_on_device(CollectSettings(decode="device"), model.preprocess, torch.device("cpu"))
    assert not decode_on_device(CollectSettings(decode="auto"), model.preprocess, torch.device("cpu"))
    with pytest.raises(ScopeError, match="--decode must be one of auto, cpu, device"):
        CollectSettings(decode="gpu").check()


def test_accelerator_bookkeeping_equals_the_host_path(folder, monkeypatch):
    """The bookkeeping a GPU runs (batched ops, every unit merged, no host sync) gives the host path's examples,
    histograms and extremes, run here on the CPU through the one switch that picks the paths."""
    from scopecli.core import devices

    model = loaded(small_cnn(seed=6), 20)
    source = open_source(folder)
    settings = CollectSettings(top_k=4, bottom_k=3, patch_size=8, probe=10, batch=5, workers=0, device="cpu")
    host = collect(model, source, ["1", "2"], settings)
    monkeypatch.setattr(devices, "host_paths", lambda device: False)
    accel = collect(model, source, ["1", "2"], settings)
    for layer in ("1", "2"):
        for which in ("top", "bottom"):
            a, b = host.examples[layer][which], accel.examples[layer][which]
            for name in ("image_index", "loc", "box", "shown", "heat_origin"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), (layer, which, name)
            assert np.array_equal(a.score, b.score, equal_nan=True) and np.allclose(a.heat, b.heat)
        sa, sb = host.stats[layer], accel.stats[layer]
        assert np.array_equal(sa.sketch["hist"], sb.sketch["hist"])
        assert np.array_equal(sa.count, sb.count) and np.array_equal(sa.max, sb.max) and np.array_equal(sa.min, sb.min)
        assert np.allclose(sa.mean, sb.mean, rtol=1e-5, atol=1e-6)
        assert np.allclose(host.probe[layer].acts.astype(np.float32), accel.probe[layer].acts.astype(np.float32))


@pytest.mark.parametrize("flag,value,says", [("--loader", "fork", "--loader must be one of"),
                                             ("--decode", "gpu", "--decode must be one of")])
def test_bad_loader_or_decode_is_one_line(tmp_path, scope_cli, folder, flag, value, says):
    from conftest import assert_one_line_error

    out = tmp_path / "a.h5"
    result = scope_cli("collect", "tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32", "--data", folder,
                       "-o", out, "--quiet", flag, value)
    assert_one_line_error(result, contains=says)
    assert not out.exists()
