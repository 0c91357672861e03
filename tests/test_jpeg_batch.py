"""Batched JPEG decoding (scopecli.data.jpeg_batch) against pixels.py's Pillow path: on the CPU here, and
GPU vs CPU when CUDA is present. Images are made in the test with Pillow."""

import dataclasses
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scopecli.data.jpeg_batch import Encoded, decode_batch, gpu_decode_available, read_encoded
from scopecli.data.pixels import MIN_SIDE, BadImage, PixelSpec, model_input, pil_transform

RESIZE, CROP = 72, 64
# JPEG decoders (libjpeg-turbo / nvJPEG IDCT and chroma upsampling) and Pillow's fixed-point resize vs a
# float tensor resize differ by a level or two; a wrong crop, orientation, channel order or antialias does not.
MEAN_TOL, P99_TOL = 1.5, 8.0
SIZES = [(400, 300), (240, 360), (17, 23), (MIN_SIDE, 20), (640, 480), (1000, 200), (129, 97)]


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients, stripes and noise: something to get wrong in every direction."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / w * 3.1 + y / h * 1.3)
    g = 127 + 90 * np.cos(y / h * 4.0) * np.sin(x / w * 2.0) + 30 * np.sign(np.sin(y / 4.0))
    b = 127 + 60 * np.sin((x + y) / 17.0) + 40 * np.sign(np.sin(x / 5.0))
    return np.clip(np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path, img: Image.Image, fmt: str = "JPEG", **kw):
    img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}), **kw)
    return path


def _ref(path, interp: str = "bilinear", **kw) -> torch.Tensor:
    return model_input(path, PixelSpec(), RESIZE, CROP, interp, transform=pil_transform(RESIZE, CROP, interp),
                       **kw)[0]


def _reason(path, **kw) -> str:
    with pytest.raises(BadImage) as info:
        model_input(path, PixelSpec(), RESIZE, CROP, "bilinear", **kw)
    return str(info.value)


def _stats(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float, float]:
    d = (a.cpu().int() - b.cpu().int()).abs().float().flatten()
    return int(d.max()), float(d.mean()), float(torch.quantile(d, 0.99))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    _, mean, p99 = _stats(a, b)
    return mean <= MEAN_TOL and p99 <= P99_TOL


def _fallback(paths, interp: str, calls: list):
    def run(i: int) -> torch.Tensor:
        calls.append(i)
        return model_input(paths[i], PixelSpec(), RESIZE, CROP, interp)[0]
    return run


@pytest.fixture
def photos(tmp_path):
    return [_save(tmp_path / f"p{w}x{h}.jpg", Image.fromarray(_photo(w, h, k))) for k, (w, h) in enumerate(SIZES)]


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_cpu_decode_matches_pillow_path(photos, interp):
    items = [read_encoded(p) for p in photos]
    assert all(e.is_jpeg and not e.reason for e in items)
    calls = []
    out, ok, reasons = decode_batch(items, RESIZE, CROP, interp, "cpu", _fallback(photos, interp, calls))
    assert out.shape == (len(photos), 3, CROP, CROP) and out.dtype == torch.uint8 and out.device.type == "cpu"
    assert ok == [True] * len(photos) and reasons == [""] * len(photos) and calls == []
    for i, p in enumerate(photos):
        assert _close(out[i], _ref(p, interp)), (p.name, _stats(out[i], _ref(p, interp)))


def test_nearest_picks_pillows_pixels(photos):
    """Nearest neighbour picks the same source pixels as Pillow, exact halves included (libjpeg-turbo on the
    CPU decodes as Pillow does, so the result is identical)."""
    out, ok, _ = decode_batch([read_encoded(p) for p in photos], RESIZE, CROP, "nearest", "cpu", None)
    assert all(ok)
    for i, p in enumerate(photos):
        assert torch.equal(out[i], _ref(p, "nearest")), (p.name, _stats(out[i], _ref(p, "nearest")))


def test_bound_discriminates_real_bugs(photos):
    """A crop off by two pixels, a transposed image, BGR order or a resize without antialias all fail."""
    from torchvision.transforms.v2 import functional as F

    p = photos[0]  # 400 x 300
    ref = _ref(p)
    img = torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1).float()
    h, w = img.shape[-2:]
    nh, nw = RESIZE, int(RESIZE * w / h)
    full = F.resize(img, [nh, nw], antialias=True).round().clamp(0, 255).to(torch.uint8)
    top, left = round((nh - CROP) / 2), round((nw - CROP) / 2)
    good = full[:, top:top + CROP, left:left + CROP]
    assert _close(good, ref)
    shifted = full[:, top:top + CROP, left + 2:left + 2 + CROP]
    assert not _close(shifted, ref), _stats(shifted, ref)
    assert not _close(good.transpose(1, 2), ref)
    assert not _close(good.flip(0), ref)
    aliased = F.resize(img, [nh, nw], antialias=False).round().clamp(0, 255).to(torch.uint8)
    assert not _close(aliased[:, top:top + CROP, left:left + CROP], ref)


def test_sha256_and_size_match_model_input(photos):
    for p in photos:
        e = read_encoded(p)
        _, sha, size = model_input(p, PixelSpec(), RESIZE, CROP)
        assert (e.sha256, (e.width, e.height)) == (sha, size)


def test_gray_cmyk_png_take_the_fallback(tmp_path):
    arr = _photo(120, 90, 3)
    paths = [
        _save(tmp_path / "rgb.jpg", Image.fromarray(arr)),
        _save(tmp_path / "gray.jpg", Image.fromarray(arr).convert("L")),
        _save(tmp_path / "cmyk.jpg", Image.fromarray(arr).convert("CMYK")),
        _save(tmp_path / "photo.png", Image.fromarray(arr), "PNG"),
    ]
    items = [read_encoded(p) for p in paths]
    assert [e.is_jpeg for e in items] == [True, True, False, False]
    assert all(e.sha256 for e in items) and not items[2].data and not items[3].data
    assert all((e.width, e.height) == (120, 90) for e in items)
    calls = []
    out, ok, reasons = decode_batch(items, RESIZE, CROP, "bilinear", "cpu", _fallback(paths, "bilinear", calls))
    assert calls == [2, 3] and all(ok) and reasons == [""] * 4
    assert _close(out[0], _ref(paths[0])) and _close(out[1], _ref(paths[1]))
    assert torch.equal(out[1][0], out[1][1]) and torch.equal(out[1][0], out[1][2])
    assert torch.equal(out[2], _ref(paths[2])) and torch.equal(out[3], _ref(paths[3]))


def test_jpeg_variants(tmp_path):
    """Progressive and 4:4:4 / 4:2:2 JPEGs decode on the device; other frame types (here extended
    sequential, SOF1) and JPEGs with data after the end marker take the CPU path."""
    img = Image.fromarray(_photo(150, 110, 4))
    paths = [_save(tmp_path / "prog.jpg", img, progressive=True), _save(tmp_path / "444.jpg", img, subsampling=0),
             _save(tmp_path / "422.jpg", img, subsampling=1)]
    data = paths[0].read_bytes()
    sof = _save(tmp_path / "base.jpg", img).read_bytes()
    at = sof.index(b"\xff\xc0")
    (tmp_path / "sof1.jpg").write_bytes(sof[:at] + b"\xff\xc1" + sof[at + 2:])
    (tmp_path / "tail.jpg").write_bytes(data + b"trailing bytes")
    paths += [tmp_path / "sof1.jpg", tmp_path / "tail.jpg"]
    items = [read_encoded(p) for p in paths]
    assert [e.is_jpeg for e in items] == [True, True, True, False, False]
    calls = []
    out, ok, _ = decode_batch(items, RESIZE, CROP, "bilinear", "cpu", _fallback(paths, "bilinear", calls))
    assert all(ok) and calls == [3, 4]
    assert all(_close(out[i], _ref(p)) for i, p in enumerate(paths[:3]))
    assert torch.equal(out[3], _ref(paths[3])) and torch.equal(out[4], _ref(paths[4]))


def test_filters_a_tensor_cannot_do_take_the_fallback(photos):
    calls = []
    out, ok, _ = decode_batch([read_encoded(p) for p in photos[:3]], RESIZE, CROP, "lanczos", "cpu",
                              _fallback(photos, "lanczos", calls))
    assert calls == [0, 1, 2] and all(ok)
    assert all(torch.equal(out[i], _ref(p, "lanczos")) for i, p in enumerate(photos[:3]))


def test_truncated_and_garbage_files(tmp_path, photos):
    good = photos[0]
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(np.random.default_rng(1).bytes(3000))
    (tmp_path / "badhead.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(2).bytes(3000))
    paths = [good, tmp_path / "trunc.jpg", tmp_path / "garbage.jpg", tmp_path / "badhead.jpg", photos[1]]
    items = [read_encoded(p) for p in paths]
    assert items[0].is_jpeg and not items[1].is_jpeg  # no EOI: the CPU path gives the verdict
    assert items[2].reason == _reason(paths[2]) and items[3].reason == _reason(paths[3])
    calls = []
    out, ok, reasons = decode_batch(items, RESIZE, CROP, "bilinear", "cpu", _fallback(paths, "bilinear", calls))
    assert ok == [True, False, False, False, True] and calls == [1]
    for i in (1, 2, 3):
        assert reasons[i] == _reason(paths[i]) and reasons[i] and not out[i].any()
    alone, _, _ = decode_batch([items[0], items[4]], RESIZE, CROP, "bilinear", "cpu", None)
    assert torch.equal(out[0], alone[0]) and torch.equal(out[4], alone[1])


def test_failed_device_decode_goes_to_the_fallback(tmp_path, photos):
    """A file that passes the header checks but fails to decode fails the batched call; the others are
    then decoded one by one and the failure takes the CPU path."""
    data = photos[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    paths = [photos[0], tmp_path / "cut.jpg", photos[1]]
    items = [read_encoded(p) for p in paths]
    items[1] = dataclasses.replace(items[0], data=data[: len(data) // 2])  # lies about being whole
    calls = []
    out, ok, reasons = decode_batch(items, RESIZE, CROP, "bilinear", "cpu", _fallback(paths, "bilinear", calls))
    assert calls == [1] and ok == [True, False, True] and reasons[1] == _reason(paths[1])
    assert _close(out[0], _ref(paths[0])) and _close(out[2], _ref(paths[2])) and not out[1].any()


def test_too_small_too_large_and_unreadable_reasons(tmp_path):
    small = _save(tmp_path / "small.jpg", Image.fromarray(_photo(MIN_SIDE - 1, 40)))
    e = read_encoded(small)
    assert not e.is_jpeg and e.reason == _reason(small) and e.reason.startswith("too small")
    big = _save(tmp_path / "big.jpg", Image.fromarray(_photo(60, 50)))
    e = read_encoded(big, max_pixels=2000)
    assert e.reason == _reason(big, max_pixels=2000) and e.reason.startswith("too large")
    assert (e.width, e.height) == (60, 50)
    missing = tmp_path / "missing.jpg"
    e = read_encoded(missing)
    assert e.reason == _reason(missing) and e.reason.startswith("unreadable")
    items = [read_encoded(small), read_encoded(missing)]
    out, ok, reasons = decode_batch(items, RESIZE, CROP, "bilinear", "cpu", None)  # fallback never called
    assert ok == [False, False] and reasons == [i.reason for i in items] and not out.any()


def test_encoded_pickles(photos):
    e = read_encoded(photos[2])
    assert isinstance(e, Encoded) and pickle.loads(pickle.dumps(e)) == e


def test_gpu_decode_unavailable_off_cuda():
    assert not gpu_decode_available("cpu") and not gpu_decode_available(torch.device("cpu"))
    assert not gpu_decode_available("not a device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_cuda_decode_matches_cpu_decode(photos, interp):
    assert gpu_decode_available("cuda")
    items = [read_encoded(p) for p in photos]
    gpu, ok, _ = decode_batch(items, RESIZE, CROP, interp, "cuda", None)
    cpu, _, _ = decode_batch(items, RESIZE, CROP, interp, "cpu", None)
    assert gpu.device.type == "cuda" and all(ok)
    for i, p in enumerate(photos):
        assert _close(gpu[i], cpu[i]), (p.name, _stats(gpu[i], cpu[i]))
        assert _close(gpu[i], _ref(p, interp)), (p.name, _stats(gpu[i], _ref(p, interp)))
