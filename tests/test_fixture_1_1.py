"""tests/fixtures/artifact-1.1.h5 was written once by `scripts/make_fixture.py --version 1.1` (the real
commands on tinymodels:tiny_cnn, every per-layer element); never regenerate it. Today's reader must read
every element of it, validate it, show it and export it."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from scopecli.artifact import open_artifact
from scopecli.artifact.registry import layer_elements
from scopecli.artifact.validate import validate

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "artifact-1.1.h5")


@pytest.fixture
def local(tmp_path):
    path = tmp_path / "fixture.h5"
    shutil.copy(FIXTURE, path)
    return path


def test_every_element_is_in_the_frozen_file_and_reads(local):
    assert validate(local) == []
    with h5py.File(local, "r") as f:
        stored = {f["layers"][layer][name].attrs["encoding-type"] for layer in f["layers"] for name in f["layers"][layer]}
    # every element of its format version (a new element needs a new frozen fixture of the version adding it)
    assert stored == {e.encoding for e in layer_elements() if tuple(map(int, e.since.split("."))) <= (1, 1)}
    with open_artifact(local) as art:
        assert art.format_version == "1.1"
        assert art.layers == ["1", "3", "3@pca4"]
        u = art.unit("3:1")
        assert u.renders[0].image.shape == (32, 32, 3)
        top = u.examples["top"]
        assert len(top) == 3 and top[0].patch.shape[2] == 3 and top[0].score >= top[-1].score
        assert u.stats["count"] > 0
        assert len(u.inputs) > 0 and all(r.layer == "1" for r in u.inputs)
        assert art.probe("3").acts.shape == (4, 8)
        sample = art.sample("3")
        assert sample.vectors16.shape == (64, 8)
        space = art.space("3@pca4")
        assert space.method == "pca" and space.decoder.shape == (4, 8)
        z = space.encode(np.asarray(sample.vectors16[:5], dtype=np.float32))
        assert z.shape == (5, 4) and np.isfinite(z).all()
        su = art.unit("3@pca4:0")
        assert su.direction.shape == (8,) and su.renders[0].image.shape == (32, 32, 3)
        assert len(su.examples["top"]) == 3
        cars = art.caricatures("3")
        assert len(cars) == 1 and cars[0].image.shape == cars[0].photo.shape
        atlas = art.atlas("3")
        assert atlas.grid == 2 and sum(c.count for c in atlas.cells) == 64
        assert atlas.cells[0].image.shape == (32, 32, 3)


def test_the_frozen_file_shows_and_exports(local, tmp_path, scope_cli):
    r = scope_cli("show", local, "3@pca4:0", "--json")
    assert r.code == 0, r.stderr
    r = scope_cli("show", local, "3:0")
    assert r.code == 0 and "3:0" in r.stdout
    site = tmp_path / "site"
    r = scope_cli("export", local, "-o", site, "--quiet")
    assert r.code == 0, r.stderr
    assert (site / "index.html").exists()
