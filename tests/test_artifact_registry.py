"""The element registry: an element defined here, outside scopecli/, goes through write, read, validate and pack.

The toy element stores one float per unit ("notes"): staged as {unit: value}, merged by union (a unit
with two different values is a conflict). Nothing under scopecli/ knows about it.
"""

from __future__ import annotations

import json
import os
import stat

import h5py
import numpy as np
import pytest
from artifact_factory import fake_image_table, fake_layers, fake_model_info, fake_probe

from scopecli.artifact import ArtifactWriter, LayerElement, open_artifact, registered
from scopecli.artifact.h5io import check_element, get_dataset, read_numeric, set_encoding, write_array
from scopecli.artifact.pack import pack
from scopecli.artifact.validate import validate
from scopecli.core.errors import ScopeError


class Notes(LayerElement):
    name = "notes"
    encoding = "test.notes"
    features = ("notes",)
    unit_field = "note"
    schema = {
        "kind": "group", "encoding-type": "test.notes", "required": False,
        "children": {
            "units": {"kind": "dataset", "encoding-type": "array", "dtype": "int64", "shape": ["U"]},
            "value": {"kind": "dataset", "encoding-type": "array", "dtype": "float64", "shape": ["U"]},
        },
    }

    def read(self, group, slot):
        where = slot.where + "/notes"
        check_element(group, self.encoding, where)
        units = read_numeric(get_dataset(group, "units", where), where, "i", 1)
        value = read_numeric(get_dataset(group, "value", where), where, "f", 1)
        if len(units) != len(value) or (len(units) and ((units < 0) | (units >= slot.units)).any()):
            raise ScopeError(f"{where}: bad notes")
        return dict(zip(units.tolist(), value.tolist()))

    def present(self, group, slot, section=None):
        m = np.zeros(slot.units, bool)
        m[list(section or self.read(group, slot))] = True
        return m

    def info(self, group, slot, section=None):
        return {"notes": 0 if group is None else len(section or self.read(group, slot))}

    def unit_value(self, section, unit, slot, art):
        return None if section is None else section.get(unit)

    def new(self):
        return {}

    def stage(self, section, slot):
        return dict(section)

    def put(self, staged, value, slot, **options):
        staged.update({int(u): float(v) for u, v in value.items()})

    def is_empty(self, staged):
        return not staged

    def write(self, group, staged, slot):
        g = group.create_group(self.name)
        set_encoding(g, self.encoding)
        units = sorted(staged)
        write_array(g, "units", units, np.int64)
        write_array(g, "value", [staged[u] for u in units], np.float64)

    def check(self, section, slot, art, quick):
        bad = [u for u, v in section.items() if not np.isfinite(v)]
        return [f"layer {slot.name}: note of unit {u} is not finite" for u in bad], set(self.features)

    def merge(self, inputs, slot, plan):
        out = {}
        for inp in inputs:
            for u, v in inp.section.items():
                if u in out and out[u] != v and plan.prefer is None:
                    plan.conflict(f"{slot.name}:{u} note in two inputs")
                out[u] = v
        return out


def _write(path, notes: dict, layer: str = "features.1/conv"):
    with ArtifactWriter(path, fake_model_info(), "test") as w:
        for rec in fake_layers():
            w.ensure_layer(rec)
        w.put(layer, "notes", notes)
    return str(path)


def test_toy_element_round_trips_through_write_read_validate_pack(tmp_path):
    with registered(Notes):
        a = _write(tmp_path / "a.h5", {0: 1.5, 3: -2.0})
        b = _write(tmp_path / "b.h5", {1: 7.0})
        with open_artifact(a) as art:
            assert art.section("features.1/conv", "notes") == {0: 1.5, 3: -2.0}
            assert art.unit("features.1/conv:3").note == -2.0
            assert art.unit("features.1/conv:1").note is None
            assert art.unit("head.fc:0").note is None  # the other layer has no notes
            assert "notes" in art.required_features
            assert art.info()["layers"][0]["notes"] == 2
            assert list(np.nonzero(art.present("features.1/conv", "notes"))[0]) == [0, 3]
        assert validate(a) == []
        packed = tmp_path / "p.h5"
        pack([a, b], packed)
        with open_artifact(packed) as art:
            assert art.section("features.1/conv", "notes") == {0: 1.5, 1: 7.0, 3: -2.0}
        assert validate(packed) == []
        # an untouched element survives a later write to the same file (copied verbatim)
        with ArtifactWriter(packed, fake_model_info(), "test2") as w:
            w.ensure_layer(fake_layers()[1])
        with open_artifact(packed) as art:
            assert art.section("features.1/conv", "notes") == {0: 1.5, 1: 7.0, 3: -2.0}
        # its merge rule holds: two inputs with different values for one unit conflict
        c = _write(tmp_path / "c.h5", {0: 9.0})
        with pytest.raises(ScopeError, match="note in two inputs"):
            pack([a, c], tmp_path / "q.h5")
        # its semantic check runs in validate
        with h5py.File(a, "r+") as f:
            ds = f["layers/features.1%2Fconv/notes/value"]
            ds[0] = np.nan
        assert any("not finite" in p for p in validate(a, quick=True))


def test_files_with_an_unknown_element_are_refused_then_read_once_registered(tmp_path):
    with registered(Notes):
        a = _write(tmp_path / "a.h5", {2: 1.0})
    with pytest.raises(ScopeError, match="needs features this scope does not know"):
        open_artifact(a)
    with registered(Notes):
        with open_artifact(a) as art:
            assert art.unit("features.1/conv:2").note == 1.0


def test_registering_a_second_element_under_a_taken_name_is_refused():
    class Other(Notes):
        pass

    Other.name = "renders"
    with pytest.raises(ValueError, match="already registered"):
        with registered(Other):
            pass


def test_diff_files_are_first_class(scope_cli, tmp_path):
    """`scope diff --save` writes 0644-style files that `info` and `validate` understand."""
    a = str(tmp_path / "a.h5")
    with ArtifactWriter(a, fake_model_info(), "test") as w:
        w.set_dataset(fake_image_table(100, seed=1))
        for i, rec in enumerate(fake_layers()):
            w.ensure_layer(rec)
            w.put_probe(rec.name, fake_probe(rec, range(100), i))
    d = tmp_path / "d.h5"
    old_umask = os.umask(0o022)
    try:
        r = scope_cli("diff", a, a, "--save", d, "--permutations", "2", "-q", "--json")
    finally:
        os.umask(old_umask)
    assert r.code == 0, r.stderr
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o644
    r = scope_cli("info", d, "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "scope.diff" and info["shared_images"] == 100
    assert [x["layer_a"] for x in info["layers"]] == [x["best_b"] for x in info["layers"]]  # A vs A: the diagonal
    r = scope_cli("info", d)
    assert r.code == 0 and "scope diff format 1.0" in r.stdout
    r = scope_cli("validate", d)
    assert r.code == 0, r.stdout + r.stderr
    with h5py.File(d, "r+") as f:
        f["cka/linear"][0, 0] = 0.123456
    r = scope_cli("validate", d)
    assert r.code == 1 and "sha256 mismatch" in r.stdout


def test_old_diff_file_still_reads_and_validates(scope_cli):
    d = os.path.join(os.path.dirname(__file__), "fixtures", "v0.1.0", "diff.h5")
    assert scope_cli("validate", d).code == 0
    r = scope_cli("info", d, "--json")
    assert r.code == 0 and json.loads(r.stdout)["a"]["model"]["name"] == "tiny_resnet"
