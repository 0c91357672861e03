"""Models whose input is not 8-bit RGB: 1, 4 and 5 channels, 16-bit data, a 32 px model; and a known answer.

Every command of the pipeline runs on tiny models built here (tests/tinymodels.py), on data made here: 16-bit
.npy arrays, 16-bit TIFF stacks, 16-bit grayscale PNGs, 32 px RGB PNGs.
"""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import tinymodels
from conftest import assert_one_line_error
from scopecli.artifact import open_artifact
from scopecli.artifact.display import DisplaySpec, for_screen, to8
from scopecli.artifact.validate import validate
from scopecli.model import find_layer, layer_table, resolve_model
from test_layers import analytic_field, measured_field

FIXTURE_1_2 = os.path.join(os.path.dirname(__file__), "fixtures", "artifact-1.2.h5")
FAST = ("--steps", "8", "--quiet")
COLLECT = ("--top-k", "3", "--bottom-k", "1", "--probe", "4", "--batch", "4", "--workers", "0", "--quiet")


def _npy_folder(root, n, channels, side, seed, axis_first=True):
    """n uint16 arrays (C x H x W when axis_first) with random smooth structure."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        base = rng.integers(0, 65535, size=(channels, side // 4, side // 4)).astype(np.float64)
        arr = np.kron(base, np.ones((1, 4, 4))).astype(np.uint16)
        np.save(root / f"s{i:02d}.npy", arr if axis_first else arr.transpose(1, 2, 0))
    return root


def _tiff_folder(root, n, channels, side, seed):
    """n multi-page 16-bit TIFF stacks (one page per channel), as satellite and microscopy data come."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        base = rng.integers(0, 65535, size=(channels, side // 4, side // 4)).astype(np.float64)
        tifffile.imwrite(root / f"t{i:02d}.tif", np.kron(base, np.ones((1, 4, 4))).astype(np.uint16),
                         photometric="minisblack")  # one page per channel
    return root


def _gray16_folder(root, n, side, seed):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        arr = (rng.random((side // 4, side // 4)) * 4095).astype(np.uint16)
        Image.fromarray(np.kron(arr, np.ones((4, 4), np.uint16))).save(root / f"g{i:02d}.png")
    return root


def _rgb_folder(root, n, side, seed):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / f"c{i:02d}.png")
    return root


CASES = {
    # name: (factory, channels, bit depth, input size, data maker, extra collect options)
    "gray": ("tinymodels:gray_cnn", 1, 16, 40, lambda p: _gray16_folder(p, 6, 48, 1), ("--value-range", "0,4095")),
    "five": ("tinymodels:five_channel", 5, 16, 40, lambda p: _npy_folder(p, 6, 5, 48, 2), ("--channel-axis", "0")),
    "four": ("tinymodels:four_band", 4, 16, 40, lambda p: _tiff_folder(p, 6, 4, 48, 4), ()),
    "cifar": ("tinymodels:cifar_cnn", 3, 8, 32, lambda p: _rgb_folder(p, 6, 32, 3), ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_command_runs_on_the_model(case, tmp_path, scope_cli):
    spec, channels, depth, size, make, extra = CASES[case]
    data = make(tmp_path / "data")
    out = tmp_path / f"{case}.h5"
    common = ("--input-size", str(size), "--bit-depth", str(depth))
    r = scope_cli("layers", spec, *common, "--json")
    assert r.code == 0, r.stderr
    layers = json.loads(r.stdout)
    assert layers["model"]["preprocess"]["channels"] == channels and layers["input_size"] == size
    r = scope_cli("collect", spec, "--data", data, "-o", out, "--layer", "2,4", *common, *extra, *COLLECT)
    assert r.code == 0, r.stderr
    # a later render says nothing about the input: it takes the file's recorded spec
    r = scope_cli("render", spec, "-o", out, "--layer", "4", "--units", "0:2", "--input-size", str(size), *FAST)
    assert r.code == 0, r.stderr
    assert validate(out) == []
    qmax = (1 << depth) - 1
    with open_artifact(out) as art:
        pre = art.model["preprocess"]
        assert (pre["channels"], pre["bit_depth"], len(pre["mean"])) == (channels, depth, channels)
        unit = art.unit("4:1")
        image = unit.renders[0].image
        assert image.shape == (size, size, channels) and image.dtype == (np.uint16 if depth == 16 else np.uint8)
        assert image.max() > image.min()  # a picture, not a constant
        patches = [e.patch for e in unit.examples["top"]]
        assert patches and all(p.shape[2] == channels and p.dtype == image.dtype for p in patches)
        table = art.dataset
        assert len(table.paths) == 6
        if channels == 3 and depth == 8:
            assert table.pixel_cov is None
        else:
            assert table.pixel_cov.shape == (channels, channels)
            assert np.all(np.linalg.eigvalsh(table.pixel_cov) > -1e-9)  # a covariance
            assert 0 < table.pixel_mean.min() and table.pixel_mean.max() < 1
        if case == "gray":  # 12-bit data stated as 0..4095: the 16-bit patches use the whole range
            assert max(int(p.max()) for p in patches) > 0.8 * qmax
    with h5py.File(out, "r") as f:
        assert ("channels" in list(f.attrs["required_features"])) == (not (channels == 3 and depth == 8))
    r = scope_cli("show", out, "4:1", "--json")
    assert r.code == 0, r.stderr
    r = scope_cli("export", out, "-o", tmp_path / "site", "--quiet")
    assert r.code == 0, r.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    r = scope_cli("validate", out)
    assert r.code == 0, r.stdout + r.stderr


@pytest.mark.parametrize("factory,channels", [(tinymodels.gray_cnn, 1), (tinymodels.four_band, 4),
                                              (tinymodels.five_channel, 5), (tinymodels.cifar_cnn, 3)])
def test_channels_are_traced_and_fields_match_gradients(factory, channels):
    loaded = resolve_model(f"tinymodels:{factory.__name__}", input_size=32)
    assert loaded.preprocess.channels == channels
    assert len(loaded.preprocess.mean) == len(loaded.preprocess.std) == channels
    model = factory().eval()
    table = layer_table(model, 32)
    for name in ("1", "3", "5"):
        info = find_layer(table, name)
        measured, (cy, cx) = measured_field(model, name, 32, channels=channels)
        assert measured == analytic_field(info, cy, cx, 32), name


def test_wrong_channel_options_are_one_line_errors(tmp_path, scope_cli):
    assert_one_line_error(scope_cli("layers", "tinymodels:gray_cnn", "--in-channels", "3"), contains="reads 1 channels")
    assert_one_line_error(scope_cli("layers", "tinymodels:five_channel", "--mean", "0.5,0.5"), contains="5 channels")
    assert_one_line_error(scope_cli("layers", "tinymodels:five_channel", "--bit-depth", "12"), contains="8 or 16")
    assert_one_line_error(scope_cli("layers", "tinymodels:five_channel", "--value-range", "9,1"), contains="HIGH > LOW")
    assert_one_line_error(scope_cli("layers", "tinymodels:five_channel", "--display-channels", "7,0,1"),
                          contains="outside 0..4")
    assert_one_line_error(scope_cli("layers", "tinymodels:five_channel", "--channel-names", "a,b"),
                          contains="5 non-empty names")
    assert_one_line_error(scope_cli("render", "tinymodels:five_channel", "--param", "maco", "--input-size", "32",
                                    "-o", tmp_path / "m.h5", "--layer", "1", "--units", "0", *FAST), contains="maco")
    # a 4-channel sample under a 5-channel model is skipped with its reason; none left is an error
    data = _npy_folder(tmp_path / "four", 3, 4, 32, 9)
    r = scope_cli("collect", "tinymodels:five_channel", "--data", data, "-o", tmp_path / "x.h5", "--input-size", "32",
                  *COLLECT)
    assert_one_line_error(r, contains="4 channels")


def test_a_file_keeps_one_input_spec(tmp_path, scope_cli):
    out = tmp_path / "a.h5"
    r = scope_cli("render", "tinymodels:five_channel", "-o", out, "--input-size", "32", "--bit-depth", "16",
                  "--layer", "1", "--units", "0", *FAST)
    assert r.code == 0, r.stderr
    r = scope_cli("render", "tinymodels:five_channel", "-o", out, "--input-size", "32", "--bit-depth", "8",
                  "--layer", "1", "--units", "1", *FAST)
    assert_one_line_error(r, contains="16-bit")
    with open_artifact(out) as art:
        assert art.unit("1:0").renders[0].image.dtype == np.uint16  # the first run's pictures are kept


# -- the known answer ------------------------------------------------------------------------------------------

K = tinymodels.EDGE_CHANNEL


def _edge_images(root, n=12, side=32, seed=0):
    """5-channel images; only those with index % 3 == 0 carry vertical edges in channel K. The others carry
    horizontal edges in channel K, or vertical edges in other channels (which the unit must not see)."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    want = set()
    for i in range(n):
        arr = np.full((5, side, side), 0.5) + 0.05 * rng.random((5, side, side))
        col = 6 + (i * 5) % (side - 12)
        if i % 3 == 0:
            arr[K, :, col:] = 0.95  # a dark-to-bright vertical edge in channel K
            want.add(f"e{i:02d}.npy")
        elif i % 3 == 1:
            arr[K] = 0.5  # channel K flat ...
            arr[K, col:, :] = 0.95  # ... with a horizontal edge
        else:
            arr[K] = 0.5
            arr[(K + 1) % 5, :, col:] = 0.95  # a vertical edge in another channel
        np.save(root / f"e{i:02d}.npy", (arr * 65535).astype(np.uint16))
    return root, want


def test_known_answer_edge_channel(tmp_path, scope_cli):
    data, want = _edge_images(tmp_path / "edges")
    out = tmp_path / "edge.h5"
    r = scope_cli("collect", "tinymodels:edge_detector", "--data", data, "-o", out, "--layer", "conv",
                  "--input-size", "32", "--bit-depth", "16", "--top-k", str(len(want)), "--bottom-k", "0",
                  "--probe", "4", "--batch", "4", "--workers", "0", "--quiet")
    assert r.code == 0, r.stderr
    out_r = tmp_path / "edge_render.h5"
    r = scope_cli("render", "tinymodels:edge_detector", "-o", out_r, "--layer", "conv", "--units", "0",
                  "--input-size", "32", "--bit-depth", "16", "--steps", "64", "--quiet")
    assert r.code == 0, r.stderr
    with open_artifact(out) as art:
        top = art.unit("conv:0").examples["top"]
        assert {art.dataset.paths[e.image_index] for e in top} == want
    with open_artifact(out_r) as art:
        img = art.unit("conv:0").renders[0].image.astype(np.float64) / 65535
    var = img.reshape(-1, 5).var(axis=0)
    share = var / var.sum()
    assert share[K] > 0.75, share  # the energy lies in the channel the unit reads (0.92 measured; the rest is
    # the other channels' untouched random start, which no gradient reaches)
    plane = img[:, :, K] - img[:, :, K].mean()
    power = np.abs(np.fft.fft2(plane)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij")
    horizontal_freq = power[np.abs(fx) > np.abs(fy)].sum()  # intensity changing along x: vertical structure
    vertical_freq = power[np.abs(fy) > np.abs(fx)].sum()
    assert horizontal_freq > 3 * vertical_freq, (horizontal_freq, vertical_freq)


def test_display_channels_can_be_chosen_when_showing(tmp_path, scope_cli):
    shutil.copy(FIXTURE_1_2, tmp_path / "f.h5")
    f = tmp_path / "f.h5"
    with open_artifact(f) as art:
        render = art.unit("4:1").renders[0].image
    for how in ("4,-,0", "BF,-,DAPI"):  # by index and by recorded channel name
        card = tmp_path / f"card{len(how)}.png"
        r = scope_cli("show", f, "4:1", "-o", card, "--display-channels", how)
        assert r.code == 0, r.stderr
        site = tmp_path / f"site{len(how)}"
        assert scope_cli("export", f, "-o", site, "--display-channels", how, "--quiet").code == 0
        assert "red=BF green=- blue=DAPI" in (site / "m/01-f/02-4/u/1.html").read_text()
    shown = for_screen(render, DisplaySpec.of(json.loads(json.dumps({"preprocess": {"channels": 5, "crop": 32,
                                                                                    "display_channels": [4, -1, 0]}}))))
    assert shown[:, :, 1].max() == 0 and np.array_equal(shown[::4, ::4, 0], to8(render[:, :, 4]))
    assert_one_line_error(scope_cli("export", f, "-o", tmp_path / "bad", "--display-channels", "9", "--quiet"),
                          contains="outside 0..4")
    assert_one_line_error(scope_cli("show", f, "4:1", "--display-channels", "NOPE"), contains="names: DAPI")
