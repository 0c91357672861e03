"""Rendering from Python objects: composite and function objectives, a caller's parameterization and transforms,
and what is stored about them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tinymodels
from scopecli.artifact import open_artifact
from scopecli.artifact.validate import validate
from scopecli.core.errors import ScopeError
from scopecli.model import resolve_model
from scopecli.render import RenderSettings
from scopecli.render import transforms as tf
from scopecli.render.api import obj, render
from scopecli.render.param import make_param

SETTINGS = dict(steps=48, size=32, batch=2)


@pytest.fixture(scope="module")
def loaded():
    return resolve_model("tinymodels:tiny_cnn", input_size=32)


def _means(loaded, records, layer="3"):
    """Channel means of `layer` on the stored pictures (the model seeing what was saved)."""
    module, pre = loaded.module, loaded.preprocess
    x = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1).float() / 255 for r in records])
    store = {}
    h = dict(module.named_modules())[layer].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    with torch.no_grad():
        module(pre.normalize(x))
    h.remove()
    return store["a"].mean(dim=(2, 3))


def test_a_composite_objective_raises_both_units(loaded):
    both = render(loaded, obj("3:2") + obj("3:5"), n=2, settings=RenderSettings(**SETTINGS))
    other = render(loaded, obj("3:0"), n=2, settings=RenderSettings(**SETTINGS))
    a, b = _means(loaded, both), _means(loaded, other)
    assert (a[:, 2] > b[:, 2]).all() and (a[:, 5] > b[:, 5]).all()  # both units, against a render of another
    assert both[0].objective == "channel(3:2) + channel(3:5)" and both[0].unit == -1
    assert both[0].act_final > 0 and both[0].seed != both[1].seed


def test_weights_signs_and_descriptions(loaded):
    o = 2 * obj("3:1") - 0.5 * obj("1:4", kind="neuron") + obj("3", kind="deepdream")
    assert o.describe() == "2*channel(3:1) - 0.5*neuron(1:4) + deepdream(3)"
    assert (-obj("3:1")).describe() == "-channel(3:1)"
    assert set(o.layers) == {"3", "1"}
    with pytest.raises(ScopeError, match="label"):
        obj.function(lambda acts: acts["3"][:, 0].mean(dim=(1, 2)), ["3"], label="").describe()
    with pytest.raises(ScopeError, match="kind"):
        obj("3:1", kind="bogus")


def test_a_function_objective_works_and_is_stored_as_custom(loaded, tmp_path):
    def probe(acts):
        return acts["3"][:, 6].mean(dim=(1, 2)) - acts["3"][:, 1].mean(dim=(1, 2))

    out = tmp_path / "mine.h5"
    recs = render(loaded, obj.function(probe, ["3"], label="6 not 1"), settings=RenderSettings(**SETTINGS), out=out)
    m = _means(loaded, recs)
    assert float(m[0, 6] - m[0, 1]) > 0 and recs[0].act_final > 0
    with open_artifact(out) as art:
        stored = art.renders("3")
        assert [(r.unit, r.objective) for r in stored] == [(-1, "custom:6 not 1")]
        assert np.array_equal(stored[0].image, recs[0].image)
        assert art.provenance[-1]["params"]["objective"] == "custom:6 not 1"
    assert validate(out) == []


def test_a_unit_objective_is_stored_on_its_unit_and_reruns_identically(loaded, tmp_path):
    out = tmp_path / "u.h5"
    a = render(loaded, obj("3:4"), settings=RenderSettings(**SETTINGS), out=out)
    b = render(loaded, obj("3:4"), settings=RenderSettings(**SETTINGS))
    assert np.array_equal(a[0].image, b[0].image)  # seeded: a rerun reproduces the picture
    with open_artifact(out) as art:
        (r,) = art.unit("3:4").renders
        assert r.objective == "channel(3:4)" and r.unit == 4


def test_a_callers_parameterization_and_transforms_are_used(loaded):
    made = []

    def pixels(size, generators):
        p = make_param("pixel", size, generators)
        made.append(p)
        return p

    recs = render(loaded, obj("3:2"), settings=RenderSettings(**SETTINGS), param=pixels, transforms=tf.NO_TRANSFORM)
    assert made and recs[0].param == "pixel"
    assert recs[0].act_robust == pytest.approx(recs[0].act_final, rel=1e-4)  # no transforms: robust = final


def test_bad_objectives_are_refused(loaded):
    with pytest.raises(ScopeError, match="obj"):
        render(loaded, "3:2")
    with pytest.raises(ScopeError, match="one score per image"):
        render(loaded, obj.function(lambda acts: acts["3"].mean(), ["3"], label="x"),
               settings=RenderSettings(**SETTINGS))
