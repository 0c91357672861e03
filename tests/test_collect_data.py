"""collect data sources and bad input: every bad file is skipped with a reason and the run completes."""

import os

import numpy as np
import pytest
from PIL import Image

from collect_builders import loaded, noise_images, small_cnn
from scopecli.collect import CollectSettings, collect, open_source, read_labels
from scopecli.data.dataset import read_image
from scopecli.core.errors import ScopeError


def _rgb(seed, size=40):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _bad_folder(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(d / f"good{i}.jpg", quality=95)
    buf = (d / "good0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(buf[: len(buf) // 2])
    (d / "notimage.jpg").write_text("this is not a picture\n")
    Image.fromarray(_rgb(9, 1)).save(d / "tiny.png")
    Image.fromarray(_rgb(4)[:, :, 0], mode="L").save(d / "gray.png")
    Image.fromarray(_rgb(5)).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.dstack([_rgb(6), np.full((40, 40), 128, np.uint8)]), mode="RGBA").save(d / "rgba.png")
    Image.fromarray(_rgb(7)).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(d / "sixteen.png")
    Image.fromarray(_rgb(8, 120)).save(d / "huge.png")  # over the (test-lowered) pixel limit
    os.symlink(d / "does-not-exist.png", d / "dangling.png")
    return d


CONVERTED = ["cmyk.jpg", "good0.jpg", "good1.jpg", "good2.jpg", "gray.png", "palette.png", "rgba.png", "sixteen.png"]


def test_bad_inputs_are_skipped_with_reasons_and_run_completes(tmp_path):
    d = _bad_folder(tmp_path)
    (tmp_path / "labels.tsv").write_text("file\tlabel\ngood0.jpg\tcat\ngood1.jpg\tdog\nmissing.jpg\tcat\n")
    notes = []
    model = loaded(small_cnn(), 24)
    settings = CollectSettings(top_k=10, bottom_k=2, patch_size=12, probe=4, batch=4, workers=0, device="cpu",
                               max_pixels=100 * 100)
    res = collect(model, open_source(d, labels=tmp_path / "labels.tsv"), ["2"], settings, log=notes.append)
    assert res.images.paths == CONVERTED
    reasons = dict(res.images.skipped)
    assert set(reasons) == {"truncated.jpg", "notimage.jpg", "tiny.png", "huge.png", "dangling.png", "missing.jpg"}
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notimage.jpg"]
    assert "too small" in reasons["tiny.png"] and "1x1" in reasons["tiny.png"]
    assert "decompression-bomb" in reasons["huge.png"]
    assert "unreadable" in reasons["dangling.png"]
    assert "labels file" in reasons["missing.jpg"]
    assert sum(n.startswith("skipped ") for n in notes) == 6
    # labels: by name, sorted class names; unlabeled images get -1
    assert res.images.class_names == ["cat", "dog"]
    assert res.images.label.tolist() == [-1, 0, 1, -1, -1, -1, -1, -1]
    # fewer usable images than top-k: a clear partial result
    top = res.examples["2"]["top"]
    assert (top.image_index[:, :8] >= 0).all() and (top.image_index[:, 8:] == -1).all()
    assert np.isnan(top.score[:, 8:]).all() and all(row[9] is None for row in top.patches)
    assert any("only 8 usable images" in n for n in notes)
    assert sorted(set(top.image_index[top.image_index >= 0].tolist())) == list(range(8))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permission bits")
def test_unreadable_permissions_skipped(tmp_path):
    noise_images(tmp_path, 3, 24)
    os.chmod(tmp_path / "img_001.png", 0)
    res = collect(loaded(small_cnn(), 24), open_source(tmp_path), ["2"],
                  CollectSettings(top_k=2, bottom_k=0, probe=0, batch=2, workers=0, device="cpu"))
    assert dict(res.images.skipped) == {"img_001.png": "unreadable: permission denied"}


def test_converted_modes_keep_their_content(tmp_path):
    d = _bad_folder(tmp_path)
    img, _ = read_image(d / "sixteen.png")
    assert img.mode == "RGB" and abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1  # rescaled, not clipped to 255
    rgba, _ = read_image(d / "rgba.png")
    assert np.array_equal(np.asarray(rgba), _rgb(6))
    gray, _ = read_image(d / "gray.png")
    assert np.array_equal(np.asarray(gray)[:, :, 1], _rgb(4)[:, :, 0])


def test_empty_folder_and_all_bad_are_clear_errors(tmp_path, scope_cli):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScopeError, match="no images found"):
        open_source(tmp_path / "empty")
    r = scope_cli("collect", "tinymodels:tiny_cnn", "--data", tmp_path / "empty", "-o", tmp_path / "x.h5")
    assert r.code == 2 and r.stderr.startswith("error: no images found") and "Traceback" not in r.stderr
    assert not (tmp_path / "x.h5").exists()
    bad = tmp_path / "allbad"
    bad.mkdir()
    (bad / "a.jpg").write_text("nope")
    with pytest.raises(ScopeError, match="no usable images"):
        collect(loaded(small_cnn(), 24), open_source(bad), ["2"], CollectSettings(workers=0, device="cpu"))


def test_imagefolder_list_file_and_sorted_order(tmp_path):
    root = tmp_path / "tree"
    for cls, n in (("zebra", 2), ("ant", 3)):
        (root / cls / "sub").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_rgb(i)).save(root / cls / ("sub" if i == 0 else "") / f"{cls}{i}.png")
    src = open_source(root)
    assert src.kind == "imagefolder" and src.class_names == ["ant", "zebra"]
    assert src.paths == sorted(src.paths) and len(src) == 5
    assert src.label.tolist() == [0 if p.startswith("ant") else 1 for p in src.paths]
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\ntree/zebra/zebra1.png\n" + str(root / "ant" / "ant1.png") + "\nnope.png\n")
    lst = open_source(listing)
    assert lst.kind == "list" and lst.paths == ["ant/ant1.png", "zebra/zebra1.png"]
    assert lst.skipped == [("nope.png", "listed but not found")]


def test_sample_labels_tsv_format(tmp_path):
    f = tmp_path / "labels.tsv"
    f.write_text("file\tclass_index\twnid\tclass_name\na.JPEG\t0\tn01440764\ttench\nb.JPEG\t2\tn01484850\tgreat_white_shark\n")
    mapping, names = read_labels(f)
    assert mapping == {"a.JPEG": 0, "b.JPEG": 2}
    assert names == ["tench", "1", "great_white_shark"]
    g = tmp_path / "plain.csv"
    g.write_text("x.png,7\ny.png,3\n")
    assert read_labels(g) == ({"x.png": 7, "y.png": 3}, [str(i) for i in range(8)])
    h = tmp_path / "bad.tsv"
    h.write_text("onlyonecolumn\n")
    with pytest.raises(ScopeError, match="at least two columns"):
        read_labels(h)
