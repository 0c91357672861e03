"""tests/fixtures/artifact-1.2.h5 was written once by `scripts/make_fixture.py --version 1.2` (the real commands
on tinymodels:five_channel with 16-bit 5-channel .npy data, channel names and a colour mapping, every per-layer
element); never regenerate it. Today's reader must read every element of it at its true channel count and depth,
validate it, show it and export it; and the same commands today must still write what it holds."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from fixture_builders import FIVE, write_full_artifact
from scopecli.artifact import open_artifact
from scopecli.artifact.display import DisplaySpec, for_screen
from scopecli.artifact.registry import layer_elements
from scopecli.artifact.validate import validate

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "artifact-1.2.h5")


@pytest.fixture
def local(tmp_path):
    path = tmp_path / "fixture.h5"
    shutil.copy(FIXTURE, path)
    return path


def _check_five_channel_file(path):
    """Every element of a 5-channel 16-bit file reads at 5 channels and 16 bits."""
    assert validate(path) == []
    with h5py.File(path, "r") as f:
        assert "channels" in list(f.attrs["required_features"])
        stored = {f["layers"][layer][name].attrs["encoding-type"] for layer in f["layers"] for name in f["layers"][layer]}
    # every element of its format version (a new element needs a new frozen fixture of the version adding it)
    assert stored == {e.encoding for e in layer_elements() if tuple(map(int, e.since.split("."))) <= (1, 2)}
    with open_artifact(path) as art:
        pre = art.model["preprocess"]
        assert (pre["channels"], pre["bit_depth"]) == (5, 16)
        assert pre["channel_names"] == ["DAPI", "GFP", "RFP", "Cy5", "BF"] and pre["display_channels"] == [2, 1, 0]
        assert art.layers == ["2", "4", "4@pca4"]
        u = art.unit("4:1")
        render = u.renders[0].image
        assert render.shape == (32, 32, 5) and render.dtype == np.uint16
        top = u.examples["top"]
        assert len(top) == 3 and all(e.patch.shape[2] == 5 and e.patch.dtype == np.uint16 for e in top)
        assert art.dataset.pixel_cov.shape == (5, 5) and art.dataset.pixel_mean.shape == (5,)
        su = art.unit("4@pca4:0")
        assert su.renders[0].image.shape == (32, 32, 5)
        cars = art.caricatures("4")
        assert len(cars) == 1 and cars[0].image.shape == cars[0].photo.shape == (32, 32, 5)
        assert art.atlas("4").cells[0].image.shape == (32, 32, 5)
        shown = for_screen(render, DisplaySpec.of(art.model))
        assert shown.dtype == np.uint8 and shown.shape[2] == 3 and shown.shape[0] % 32 == 0
        k = shown.shape[0] // 32  # nearest enlargement of a 32 px model: blocks of k x k equal pixels
        assert np.array_equal(shown[::k, ::k, 0], (render[:, :, 2].astype(np.uint32) * 255 + 32767) // 65535)


def test_every_element_is_in_the_frozen_file_and_reads(local):
    _check_five_channel_file(local)


def test_the_frozen_file_shows_and_exports(local, tmp_path, scope_cli):
    r = scope_cli("show", local, "4:1", "--json")
    assert r.code == 0, r.stderr
    r = scope_cli("show", local, "4:1")
    assert r.code == 0 and "4:1" in r.stdout
    site = tmp_path / "site"
    r = scope_cli("export", local, "-o", site, "--quiet")
    assert r.code == 0, r.stderr
    assert (site / "index.html").exists()


def test_todays_commands_write_the_same_kind_of_file(tmp_path, scope_cli):
    def run(*args) -> int:
        return scope_cli(*args).code

    _check_five_channel_file(write_full_artifact(tmp_path, run, **FIVE))
