"""Smaller files with nothing lost: each distinct patch is stored once (a layer's top and bottom sets share
one byte array), patch JPEGs carry fitted Huffman tables; every
example still reads back its own patch, with scope and with stock h5py."""

import io

import h5py
import numpy as np
import pytest
from PIL import Image
from artifact_factory import fake_examples, fake_image, fake_image_table, fake_layers, fake_model_info

from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.elements import examples as examples_mod
from scopecli.artifact.images import decode_image, encode_jpeg, encode_patch, encode_png
from scopecli.artifact.validate import validate


def _with_repeats(ex, pool):
    """Patches drawn from a small pool: the same picture is the example of several units (and of both sets)."""
    rng = np.random.default_rng(len(pool))
    ex.patches = [[None if p is None else pool[int(rng.integers(len(pool)))] for p in row] for row in ex.patches]
    return ex


def _write(path, pool):
    rec = fake_layers()[0]
    table = fake_image_table(12)
    with ArtifactWriter(path, fake_model_info(), "test") as w:
        w.ensure_layer(rec)
        w.set_dataset(table)
        top = _with_repeats(fake_examples(rec, range(rec.units), 12, 5, 1, True), pool)
        bottom = _with_repeats(fake_examples(rec, range(rec.units), 12, 3, 2, False), pool[::-1])
        w.put_examples(rec.name, "top", top)
        w.put_examples(rec.name, "bottom", bottom)
    return rec, {"top": top, "bottom": bottom}


@pytest.mark.parametrize("gap", [0, 1 << 16])  # a unit's patches read span by span, or at once
def test_each_distinct_patch_is_stored_once_and_every_example_reads_its_own(tmp_path, monkeypatch, gap):
    monkeypatch.setattr(examples_mod, "_READ_GAP", gap)
    rng = np.random.default_rng(0)
    pool = [fake_image(rng, 16 + i, 20) for i in range(4)]
    path = tmp_path / "a.h5"
    rec, given = _write(path, pool)
    assert validate(str(path)) == []
    encoded = {encode_patch(p, "jpeg", 90) for p in pool}
    with h5py.File(path, "r") as f:  # stock h5py: plain arrays, spans into one byte array
        g = f[f"layers/{rec.name.replace('/', '%2F')}/examples"]
        top, bottom = g["top/blob"], g["bottom/blob"]
        assert h5py.h5o.get_info(top.id).addr == h5py.h5o.get_info(bottom.id).addr  # one dataset, two names
        blob = top[()].tobytes()
        assert len(blob) == sum(len(e) for e in encoded)  # four pictures, 27 examples
        for which, ex in given.items():
            off, ln = g[which]["offset"][()], g[which]["length"][()]
            for u, row in enumerate(ex.patches):
                for k, p in enumerate(row):
                    if p is None:
                        assert ln[u, k] == 0
                        continue
                    data = blob[off[u, k]:off[u, k] + ln[u, k]]
                    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), decode_image(
                        encode_patch(p, "jpeg", 90), *p.shape[:2]))
    with open_artifact(path) as art:
        for which, ex in given.items():
            got = art.examples(rec.name, which)
            for u, row in enumerate(ex.patches):
                view = art.unit(f"{rec.name}:{u}")
                for k, p in enumerate(row):
                    want = None if p is None else decode_image(encode_patch(p, "jpeg", 90), *p.shape[:2])
                    have = got.patches[u][k]
                    assert (have is None) == (want is None) and (want is None or np.array_equal(have, want))
                items = [e for e in view.examples[which]]
                assert [e.rank for e in items] == [k for k, p in enumerate(row) if p is not None]
                for e in items:
                    assert np.array_equal(e.patch, decode_image(encode_patch(row[e.rank], "jpeg", 90),
                                                                *row[e.rank].shape[:2]))


def test_rewriting_one_set_keeps_the_other_readable(tmp_path):
    """A later session that replaces only the top set copies the untouched bottom set with its own bytes."""
    rng = np.random.default_rng(1)
    pool = [fake_image(rng, 12, 12) for _ in range(3)]
    path = tmp_path / "a.h5"
    rec, given = _write(path, pool)
    new_top = fake_examples(rec, range(rec.units), 12, 5, 9, True)
    with ArtifactWriter(path, fake_model_info(), "again") as w:
        w.put_examples(rec.name, "top", new_top)
    assert validate(str(path)) == []
    with open_artifact(path) as art:
        bottom, top = art.examples(rec.name, "bottom"), art.examples(rec.name, "top")
        for u, row in enumerate(given["bottom"].patches):
            for k, p in enumerate(row):
                if p is not None:
                    assert np.array_equal(bottom.patches[u][k], decode_image(encode_patch(p, "jpeg", 90), *p.shape[:2]))
        for u, row in enumerate(new_top.patches):
            for k, p in enumerate(row):
                if p is not None:
                    assert np.array_equal(top.patches[u][k], decode_image(encode_patch(p, "jpeg", 90), *p.shape[:2]))


def test_patch_jpeg_is_smaller_with_the_very_same_pixels():
    rng = np.random.default_rng(2)
    for _ in range(5):
        img = fake_image(rng, 96, 80)
        img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)  # photo-like grain
        plain, fitted = encode_jpeg(img, 90), encode_patch(img, "jpeg", 90)
        assert len(fitted) < len(plain)
        assert np.array_equal(decode_image(fitted, 96, 80), decode_image(plain, 96, 80))


def test_render_png_is_lossless():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(img), 40, 30), img)
