"""Reading any input domain: 16-bit, gray, N-channel arrays, TIFF stacks and one-file-per-channel samples."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scopecli.core.errors import ScopeError
from scopecli.data.dataset import (ChannelFiles, ModelInputs, PixelSpec, open_source, read_image, read_pixels)

RESIZE, CROP = 40, 32


def _item(path, spec, **kw):
    return ModelInputs([path], [0], RESIZE, CROP, pixels=spec, **kw)[0]


def _reference(img: Image.Image) -> torch.Tensor:
    from torchvision import transforms

    t = transforms.Compose([transforms.Resize(RESIZE, interpolation=transforms.InterpolationMode.BILINEAR),
                            transforms.CenterCrop(CROP), transforms.PILToTensor()])
    return t(img)


def _stack(seed=0, c=5, h=48, w=56, hi=65535):
    return np.random.default_rng(seed).integers(0, hi + 1, (c, h, w)).astype(np.uint16)


def test_pixel_spec_of_preprocess_and_checks():
    class Pre:
        channels, bit_depth, value_range = 5, 16, [0, 4095]

    spec = PixelSpec.of(Pre(), channel_axis=-1)
    assert spec == PixelSpec(5, 16, (0.0, 4095.0), -1) and spec.axis == 2 and spec.qmax == 65535 and spec.dtype == torch.int32
    assert PixelSpec.of(object()) == PixelSpec() and PixelSpec().qmax == 255
    with pytest.raises(ScopeError, match="bit depth"):
        PixelSpec(bit_depth=12)
    assert pickle.loads(pickle.dumps(spec)) == spec
    cf = ChannelFiles(["a.png", "b.png"])
    assert pickle.loads(pickle.dumps(cf)) == cf and isinstance(pickle.loads(pickle.dumps(cf)), ChannelFiles)


def test_rgb8_path_is_byte_identical_to_torchvision(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    item = _item(tmp_path / "a.jpg", None)
    ref = _reference(Image.open(tmp_path / "a.jpg").convert("RGB"))
    assert item["ok"] and item["image"].dtype == torch.uint8 and torch.equal(item["image"], ref)
    assert (item["width"], item["height"]) == (70, 50)
    # I;16 under an RGB spec: today's rescale to 8 bits, unchanged
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(tmp_path / "s.png")
    assert torch.equal(_item(tmp_path / "s.png", PixelSpec())["image"], torch.full((3, CROP, CROP), 128, dtype=torch.uint8))


def test_16bit_png_keeps_its_depth_with_a_value_range(tmp_path):
    Image.fromarray(np.full((40, 50), 4095, np.uint16)).save(tmp_path / "flat.png")
    Image.fromarray(np.full((40, 50), 1000, np.uint16)).save(tmp_path / "mid.png")
    spec = PixelSpec(channels=1, bit_depth=16, value_range=(0, 4095))
    flat, mid = _item(tmp_path / "flat.png", spec), _item(tmp_path / "mid.png", spec)
    assert flat["ok"] and flat["image"].dtype == torch.int32 and flat["image"].shape == (1, CROP, CROP)
    assert (flat["image"] == 65535).all()
    assert (mid["image"] == round(1000 / 4095 * 65535)).all()  # exactly proportional, no 8-bit step
    ramp = (np.arange(40 * 50).reshape(40, 50) % 4096).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    arr, sha, size = read_pixels(tmp_path / "ramp.png", spec)
    assert arr.dtype == np.uint16 and arr.shape == (40, 50, 1) and np.array_equal(arr[:, :, 0], ramp) and size == (50, 40)
    x = _item(tmp_path / "ramp.png", spec)["image"]
    assert x.min() >= 0 and x.max() <= 65535 and len(torch.unique(x)) > 256  # more levels than 8 bits hold
    # the same file under an 8-bit gray spec: scaled down by the data type's range
    g8 = _item(tmp_path / "flat.png", PixelSpec(channels=1))
    assert (g8["image"] == round(4095 / 65535 * 255)).all() and g8["image"].dtype == torch.uint8


def test_gray_and_rgb_photos_under_a_one_channel_spec(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, (45, 60), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (45, 60, 3), dtype=np.uint8)).save(tmp_path / "c.jpg")
    g = _item(tmp_path / "g.png", PixelSpec(channels=1))
    assert g["image"].shape == (1, CROP, CROP) and torch.equal(g["image"], _reference(Image.open(tmp_path / "g.png")))
    c = _item(tmp_path / "c.jpg", PixelSpec(channels=1))
    assert torch.equal(c["image"], _reference(Image.open(tmp_path / "c.jpg").convert("L")))
    # gray under the RGB spec: repeated, as before
    assert torch.equal(_item(tmp_path / "g.png", None)["image"][1], g["image"][0])


def test_five_channel_npy_both_layouts_and_tiff_agree(tmp_path):
    chw = _stack()
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", np.ascontiguousarray(chw.transpose(1, 2, 0)))
    spec = PixelSpec(channels=5, bit_depth=16)
    a = _item(tmp_path / "chw.npy", spec)
    b = _item(tmp_path / "hwc.npy", spec)
    c = _item(tmp_path / "hwc.npy", PixelSpec(channels=5, bit_depth=16, channel_axis=-1))
    assert a["ok"] and a["image"].shape == (5, CROP, CROP) and a["image"].dtype == torch.int32
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])
    assert (a["width"], a["height"]) == (56, 48)
    # each channel is the channel's own plane, resized
    one = PixelSpec(channels=1, bit_depth=16)
    np.save(tmp_path / "ch3.npy", chw[3])
    assert torch.equal(_item(tmp_path / "ch3.npy", one)["image"][0], a["image"][3])
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "pages.tif", chw)
    t = _item(tmp_path / "pages.tif", spec)
    assert t["ok"], t["reason"]
    assert torch.equal(t["image"], a["image"])
    arr, _, _ = read_pixels(tmp_path / "pages.tif", spec)
    assert arr.shape == (48, 56, 5) and np.array_equal(arr, chw.transpose(1, 2, 0))


def test_wrong_channel_count_pickles_and_bad_arrays_are_skipped(tmp_path):
    np.save(tmp_path / "four.npy", _stack(c=4))
    bad = _item(tmp_path / "four.npy", PixelSpec(channels=5, bit_depth=16))
    assert not bad["ok"] and "has 4 channels; the model takes 5" in bad["reason"]
    assert bad["image"].shape == (5, CROP, CROP) and bad["image"].dtype == torch.int32 and not bad["image"].any()
    np.save(tmp_path / "four_last.npy", np.ascontiguousarray(_stack(c=4).transpose(1, 2, 0)))
    assert "has 4 channels; the model takes 5" in _item(tmp_path / "four_last.npy", PixelSpec(5, 16))["reason"]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps([1, 2, 3]))
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 20, 20), np.uint8))
    np.save(tmp_path / "tiny.npy", np.zeros((5, 5), np.uint8))
    reasons = {n: _item(tmp_path / n, PixelSpec(channels=1))["reason"]
               for n in ("obj.npy", "pickle.npy", "text.npy", "cube.npy", "tiny.npy")}
    assert "refused" in reasons["obj.npy"] and "objects" in reasons["obj.npy"]
    assert "refused" in reasons["pickle.npy"] and "pickle" in reasons["pickle.npy"]
    assert "not a .npy" in reasons["text.npy"] and "4 dimensions" in reasons["cube.npy"]
    assert "too small" in reasons["tiny.npy"]
    np.save(tmp_path / "big.npy", np.zeros((200, 200), np.uint8))
    assert "too large" in _item(tmp_path / "big.npy", PixelSpec(channels=1), max_pixels=100 * 100)["reason"]


def test_float_npy_and_value_range_scaling(tmp_path):
    np.save(tmp_path / "f.npy", np.full((30, 30), 0.5, np.float32))
    assert (_item(tmp_path / "f.npy", PixelSpec(channels=1, bit_depth=16))["image"] == 32768).all()
    np.save(tmp_path / "i.npy", np.full((30, 30), -50, np.int16))
    x = _item(tmp_path / "i.npy", PixelSpec(channels=1, value_range=(-100, 100)))["image"]
    assert (x == 64).all()  # round(50 / 200 * 255)
    # an 8-bit RGB array under the RGB spec; read_image hands back an RGB picture of it
    rgb = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.save(tmp_path / "rgb.npy", rgb)
    img, sha = read_image(tmp_path / "rgb.npy")
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb) and len(sha) == 64


def test_channel_mapping_file(tmp_path):
    planes = _stack(seed=7, h=40, w=44, hi=4095)
    d = tmp_path / "chans"
    d.mkdir()
    rows = ["sample,c0,c1,c2,c3,c4", "# comment"]
    for s in ("b", "a"):
        names = []
        for k in range(5):
            Image.fromarray(planes[k] if s == "a" else planes[4 - k]).save(d / f"{s}_{k}.png")
            names.append(f"chans/{s}_{k}.png")
        rows.append(",".join([s] + names))
    Image.fromarray(planes[0][:30]).save(d / "c_0.png")
    for k in range(1, 5):
        Image.fromarray(planes[k]).save(d / f"c_{k}.png")
    rows.append(",".join(["c"] + [f"chans/c_{k}.png" for k in range(5)]))
    rows.append(",".join(["gone"] + [f"chans/a_{k}.png" for k in range(4)] + ["chans/nope.png"]))
    mapping = tmp_path / "samples.csv"
    mapping.write_text("\n".join(rows) + "\n")
    src = open_source(mapping)
    assert src.kind == "channels" and src.paths == ["a", "b", "c"]
    assert src.skipped == [("gone", "channel file chans/nope.png not found")]
    assert isinstance(src.files[0], ChannelFiles) and src.files[0][2] == (d / "a_2.png").resolve()
    spec = PixelSpec(channels=5, bit_depth=16, value_range=(0, 4095))
    ds = ModelInputs(src.files, range(3), RESIZE, CROP, pixels=spec)
    a, b, c = ds[0], ds[1], ds[2]
    assert a["ok"] and (a["width"], a["height"]) == (44, 40)
    assert torch.equal(a["image"], torch.flip(b["image"], dims=[0]))
    arr, sha, _ = read_pixels(src.files[0], spec)
    assert np.array_equal(arr, planes.transpose(1, 2, 0))
    import hashlib

    assert sha == hashlib.sha256(b"".join((d / f"a_{k}.png").read_bytes() for k in range(5))).hexdigest()
    assert a["sha256"] == sha
    np.save(tmp_path / "a3.npy", planes[3])
    assert torch.equal(_item(tmp_path / "a3.npy", PixelSpec(channels=1, bit_depth=16, value_range=(0, 4095)))["image"][0],
                       a["image"][3])
    assert not c["ok"] and "differ in size" in c["reason"]
    assert "has 5 channels; the model takes 4" in ModelInputs(src.files, [0], RESIZE, CROP,
                                                              pixels=PixelSpec(channels=4))[0]["reason"]


def test_mapping_file_errors_and_plain_lists(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "x.png")
    dup = tmp_path / "dup.tsv"
    dup.write_text("s1\tx.png\ts1\tx.png\n".replace("\ts1", "\ns1"))
    with pytest.raises(ScopeError, match="named twice") as err:
        open_source(dup)
    assert "\n" not in str(err.value)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("s1,x.png,x.png\ns2,x.png\n")
    with pytest.raises(ScopeError, match="row 2"):
        open_source(ragged)
    one = tmp_path / "list.csv"
    one.write_text("x.png\n")
    lst = open_source(one)
    assert lst.kind == "list" and lst.paths == ["x.png"] and lst.files == [tmp_path / "x.png"]


def test_folders_list_npy_and_tiff(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((20, 20), np.uint8))
    Image.fromarray(np.zeros((20, 20), np.uint16)).save(tmp_path / "b.tif")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("x")
    assert open_source(tmp_path).paths == ["a.npy", "b.tif", "c.png"]


def test_rgb_tiff_16bit_keeps_depth_and_without_tifffile_hints(tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    rgb = np.random.default_rng(9).integers(0, 65536, (40, 40, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    arr, _, _ = read_pixels(tmp_path / "rgb16.tif", PixelSpec(channels=3, bit_depth=16))
    assert arr.dtype == np.uint16 and np.array_equal(arr, rgb)
    tifffile.imwrite(tmp_path / "pages.tif", _stack(c=5, h=30, w=30))
    import scopecli.data.pixels as px

    monkeypatch.setattr(px, "_tifffile", lambda: None)
    bad = _item(tmp_path / "pages.tif", PixelSpec(channels=5, bit_depth=16))
    assert not bad["ok"] and "pip install scopecli[tiff]" in bad["reason"]
