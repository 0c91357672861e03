"""tests/fixtures/artifact-1.3.h5 was written once by `scripts/make_fixture.py --version 1.3` (the real commands on
tinymodels:tiny_cnn: every element of 1.1 plus effects with the ablation check and the renders' path similarity);
never regenerate it. Today's reader must read every element of it, validate it, show it and export it."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest

from scopecli.artifact import open_artifact
from scopecli.artifact.registry import layer_elements
from scopecli.artifact.validate import validate

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "artifact-1.3.h5")


@pytest.fixture
def frozen(tmp_path):
    path = tmp_path / "fixture.h5"
    shutil.copy(FIXTURE, path)
    return path


def test_every_element_of_1_3_is_in_the_frozen_file_and_reads(frozen):
    assert validate(frozen) == []
    with h5py.File(frozen, "r") as f:
        stored = {f["layers"][layer][name].attrs["encoding-type"] for layer in f["layers"] for name in f["layers"][layer]}
    assert stored == {e.encoding for e in layer_elements() if tuple(map(int, e.since.split("."))) <= (1, 3)}
    with open_artifact(frozen) as art:
        assert art.format_version == "1.3"
        effects = art.effects("3")
        assert effects.target == "label" and effects.class_names == ["a", "b"] and effects.images.sum() == 12
        assert np.isfinite(effects.sums).all() and effects.ablation is not None
        cls = art.class_units("3", "a")
        assert cls.units and cls.ablation["k"] == 2 and len(cls.ablation["random_drop"]) == 2
        votes = art.unit("3:0").effects
        assert all(v.class_name in ("a", "b") for v in votes)
        renders = art.unit("3:0").renders
        assert renders and renders[0].path_similarity is not None and -1 <= renders[0].path_similarity <= 1
        assert isinstance(renders[0].path_flagged, bool)


def test_the_frozen_1_3_file_shows_queries_and_exports(frozen, tmp_path, scope_cli):
    r = scope_cli("show", frozen, "3:0", "--json")
    assert r.code == 0, r.stderr
    r = scope_cli("query", frozen, "--class", "a", "--json")
    assert r.code == 0, r.stderr
    site = tmp_path / "site"
    r = scope_cli("export", frozen, "-o", site, "--quiet")
    assert r.code == 0, r.stderr
    assert (site / "index.html").exists() and list(site.glob("m/*/classes/index.html"))
