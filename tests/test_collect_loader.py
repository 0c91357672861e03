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
