"""Batched JPEG decoding on the model's device, for collect's pass 1 on a GPU.

Why: with a GPU running the model, pass 1 of collect is bound by Pillow decoding JPEGs in the DataLoader
workers. Here the workers only read the file bytes and the JPEG header (`read_encoded`: cheap, picklable),
and the main process decodes a whole batch at once with nvJPEG (`torchvision.io.decode_jpeg` on a list),
then resizes and crops on the device (`decode_batch`). The result matches pixels.py's Pillow path
(Resize(int), CenterCrop, uint8) within JPEG decoder tolerance. Everything else (PNG, CMYK, arithmetic or
lossless JPEGs, filters a tensor resize cannot do, decode failures) goes to a CPU fallback supplied by
the caller, normally `pixels.model_input`. For 3-channel 8-bit model inputs (`PixelSpec()`) only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from scopecli.data.pixels import (
    _TENSOR_MODES, MAX_PIXELS, BadImage, ChannelFiles, PixelSpec, _check_size, _is_npy, _is_tiff, _open_pil,
    _read_bytes, _resized_size, model_input, pil_transform,
)

_SOI = b"\xff\xd8\xff"  # start of image + the next marker's 0xFF
_GPU_FRAMES = (0xC0, 0xC2)  # baseline and progressive Huffman DCT: what nvJPEG decodes


@dataclass(frozen=True)
class Encoded:
    """One file as read by a worker: its bytes (JPEGs only), sha256, header size, whether the device may
    decode it, and the reason it is unusable ("" when it may be fine)."""

    data: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    is_jpeg: bool
    reason: str


def _frame_marker(data: bytes) -> int:
    """The JPEG's SOFn marker (0xC0 baseline, 0xC2 progressive, ...) from its segment headers; 0 if none."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 0
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
        elif 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC):
            return m
        elif m in (0xDA, 0xD9):  # scan or end before any frame header
            return 0
        elif 0xD0 <= m <= 0xD7 or m == 0x01:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return 0


def read_encoded(path, max_pixels: int = MAX_PIXELS) -> Encoded:
    """Read one file once: bytes, sha256, the header's size and whether the device can decode it. Never
    raises for a bad file: `reason` holds pixels.py's wording. Only device-decodable JPEGs keep their bytes
    (the CPU fallback reads the others); TIFFs get no size (Pillow or tifffile: pixels.py decides), and .npy
    files and ChannelFiles are not read at all (sha256 "": take the fallback's)."""
    max_pixels = int(max_pixels)
    if isinstance(path, ChannelFiles) or _is_npy(Path(path)):
        return Encoded(b"", "", 0, 0, False, "")
    try:
        data = _read_bytes(Path(path))
    except BadImage as exc:
        return Encoded(b"", "", 0, 0, False, str(exc))
    sha = hashlib.sha256(data).hexdigest()
    if _is_tiff(Path(path)):
        return Encoded(b"", sha, 0, 0, False, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # lazy: reads the header only
            (w, h), mode, fmt = img.size, img.mode, img.format
    except Exception:  # noqa: BLE001 - pixels.py words the verdict
        try:
            _open_pil(data, max_pixels)
        except BadImage as exc:
            return Encoded(b"", sha, 0, 0, False, str(exc))
        return Encoded(b"", sha, 0, 0, False, "")
    try:
        _check_size(w, h, max_pixels)
    except BadImage as exc:
        return Encoded(b"", sha, w, h, False, str(exc))
    # a JPEG not ending in EOI is truncated or carries trailing data: the CPU path gives the verdict
    gpu = (fmt == "JPEG" and mode in ("RGB", "L") and data.startswith(_SOI)
           and _frame_marker(data) in _GPU_FRAMES and data.rstrip(b"\x00").endswith(b"\xff\xd9"))
    return Encoded(data if gpu else b"", sha, w, h, gpu, "")


def _tensor_mode(interpolation: str):
    """The tensor InterpolationMode matching Pillow's filter, or None (box / hamming / lanczos)."""
    from torchvision.transforms import InterpolationMode

    name = interpolation.upper()
    if name in ("NEAREST", "NEAREST_EXACT"):
        return InterpolationMode.NEAREST_EXACT  # Pillow samples pixel centres: done by index, see below
    return getattr(InterpolationMode, name) if name in _TENSOR_MODES else None


def _decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """[3, H, W] uint8 RGB on `device` per JPEG (None where it fails): one batched call, else one by one."""
    if not datas:
        return []
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision >= 0.29 points to torchcodec
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - one bad file fails the whole call (or no list support)
            pass
        out: list[torch.Tensor | None] = []
        for t in tensors:
            try:
                out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except Exception:  # noqa: BLE001 - the CPU fallback decides
                out.append(None)
        return out


@functools.lru_cache(maxsize=512)
def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Pillow's nearest-neighbour source rows (or columns): the floor of a running sum in double, started
    at half a step, exactly as its affine scaler adds it up (a product rounds differently at exact halves)."""
    step = n_in / n_out
    pos = np.cumsum(np.r_[step / 2, np.full(n_out - 1, step)])
    return torch.from_numpy(np.minimum(np.floor(pos), n_in - 1).astype(np.int64)).to(device)


def _resize_crop(img: torch.Tensor, resize: int, crop: int, mode) -> torch.Tensor:
    """torchvision Resize(resize) + CenterCrop(crop) of a uint8 [3, H, W], resized in float, back to uint8."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    h, w = (int(s) for s in img.shape[-2:])
    nh, nw = _resized_size(h, w, resize)
    if (nh, nw) == (h, w):
        return F.center_crop(img, [crop, crop])
    if mode == InterpolationMode.NEAREST_EXACT:
        rows, cols = _nearest_index(h, nh, img.device), _nearest_index(w, nw, img.device)
        return F.center_crop(img.index_select(1, rows).index_select(2, cols), [crop, crop])
    x = F.resize(img.float(), [nh, nw], interpolation=mode, antialias=True)
    return F.center_crop(x, [crop, crop]).round().clamp_(0, 255).to(torch.uint8)


def decode_batch(items: list[Encoded], resize: int, crop: int, interpolation: str, device,
                 cpu_fallback: Callable[[int], torch.Tensor]) -> tuple[torch.Tensor, list[bool], list[str]]:
    """A batch -> (uint8 [N, 3, crop, crop] on `device`, ok, reasons). JPEGs are decoded together on the
    device; other files and failed decodes call `cpu_fallback(index)` (a [3, crop, crop] tensor; BadImage
    marks the item bad). Bad items get a zero image, so the batch keeps its composition."""
    device, resize, crop = torch.device(device), int(resize), int(crop)
    out = torch.zeros((len(items), 3, crop, crop), dtype=torch.uint8, device=device)
    ok, reasons = [not e.reason for e in items], [e.reason for e in items]
    mode = _tensor_mode(interpolation)
    gpu = [i for i, e in enumerate(items) if e.is_jpeg and not e.reason] if mode is not None else []
    cpu = [i for i, e in enumerate(items) if not e.reason and not (e.is_jpeg and mode is not None)]
    for i, img in zip(gpu, _decode_jpegs([items[i].data for i in gpu], device)):
        if img is None or tuple(img.shape) != (3, items[i].height, items[i].width):
            cpu.append(i)
        else:
            out[i] = _resize_crop(img, resize, crop, mode)
    for i in sorted(cpu):
        try:
            out[i] = cpu_fallback(i)
        except BadImage as exc:
            ok[i], reasons[i] = False, str(exc)
    return out, ok, reasons


@functools.lru_cache(maxsize=8)
def _probe(device: str) -> bool:
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 40, 90)).save(buf, "JPEG")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            got = decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)],
                              mode=ImageReadMode.RGB, device=device)
        return tuple(got[0].shape) == (3, 8, 8) and got[0].device.type == "cuda"
    except Exception:  # noqa: BLE001 - no nvJPEG, no list support, no CUDA: the CPU path
        return False


def gpu_decode_available(device) -> bool:
    """True when `device` is CUDA and torchvision decodes a batch of JPEGs on it (tried once, cached)."""
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        return False
    return device.type == "cuda" and _probe(str(device))


class EncodedInputs(torch.utils.data.Dataset):
    """Dataset over chosen source indices that only reads each file (`read_encoded`); `device_batches` decodes."""

    def __init__(self, files: list, indices, max_pixels: int = MAX_PIXELS):
        self.files, self.indices, self.max_pixels = files, list(indices), int(max_pixels)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Encoded]:
        index = self.indices[i]
        return index, read_encoded(self.files[index], self.max_pixels)


def device_batches(loader, files: list, resize: int, crop: int, interpolation: str, max_pixels: int, device):
    """Batches of an `EncodedInputs` loader (collate: a plain list) as ModelInputs batches, decoded on `device`:
    {"image" uint8 [N, 3, crop, crop] on the device, "index", "ok", "sha256", "width", "height", "reason"}. Files
    the device cannot decode take pixels.py's Pillow path (sha256 and size from there)."""
    transform, rgb = pil_transform(resize, crop, interpolation), PixelSpec()
    for items in loader:
        index = [i for i, _ in items]
        encoded = [e for _, e in items]
        meta = {j: (e.sha256, e.width, e.height) for j, e in enumerate(encoded)}

        def fallback(j: int) -> torch.Tensor:
            x, sha, (w, h) = model_input(files[index[j]], rgb, resize, crop, interpolation, max_pixels,
                                         transform=transform)
            meta[j] = (sha, w, h)
            return x

        image, ok, reasons = decode_batch(encoded, resize, crop, interpolation, device, fallback)
        yield {"image": image, "index": torch.tensor(index, dtype=torch.int64), "ok": torch.tensor(ok),
               "sha256": [meta[j][0] if ok[j] else "" for j in range(len(items))],
               "width": torch.tensor([meta[j][1] if ok[j] else 0 for j in range(len(items))]),
               "height": torch.tensor([meta[j][2] if ok[j] else 0 for j in range(len(items))]),
               "reason": reasons}


def device_decodes(interpolation: str) -> bool:
    """Can `decode_batch` resize with this filter on a device (bilinear, bicubic, nearest)?"""
    return _tensor_mode(interpolation) is not None


__all__ = ["Encoded", "EncodedInputs", "decode_batch", "device_batches", "device_decodes", "gpu_decode_available",
           "read_encoded"]
