"""Artifact write -> read round trips, extension rules and atomic writes."""

import math
import os

import h5py
import numpy as np
import pytest
from artifact_factory import (
    FAKE_FINGERPRINT,
    fake_examples,
    fake_image_table,
    fake_layers,
    fake_model_info,
    fake_probe,
    fake_renders,
    fake_stats,
    make_artifact,
)

from scopecli import open_artifact as top_level_open
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.layout import FORMAT_VERSION, escape_name, unescape_name
from scopecli.core.errors import ScopeError
from scopecli.core.records import LayerRecord


def test_full_round_trip(tmp_path):
    layers = fake_layers()
    conv, fc = layers
    table = fake_image_table(10)
    renders = fake_renders(conv, [0, 3], seed=5, objectives=("channel", "negative"))
    top = fake_examples(conv, [1, 4], 10, k=3, seed=2, patch=12)
    bottom = fake_examples(conv, [1], 10, k=3, seed=3, largest=False)
    stats = fake_stats(conv, [0, 1, 5])
    probe = fake_probe(conv, [2, 7])
    path = tmp_path / "a.h5"
    with ArtifactWriter(path, fake_model_info(), "render", {"steps": 64}) as w:
        w.ensure_layer(conv)
        w.ensure_layer(fc)
        w.put_renders(conv.name, renders)
        w.set_dataset(table)
        w.put_examples(conv.name, "top", top, patch_format="png")
        w.put_examples(conv.name, "bottom", bottom)
        w.put_stats(conv.name, stats)
        w.put_probe(conv.name, probe)
        w.add_timing("optimize", 1.5)
        w.add_timing("optimize", 0.5)

    with top_level_open(path) as art:
        assert art.layers == [conv.name, fc.name]
        assert art.layer(conv.name) == conv
        assert art.model == fake_model_info()
        assert art.format_version == FORMAT_VERSION  # this scope's format (1.1 since layouts)
        run = art.provenance[-1]
        assert run["command"] == "render" and run["params"] == {"steps": 64} and run["timings"] == {"optimize": 2.0}
        t = art.dataset
        assert t.paths == table.paths and t.sha256 == table.sha256 and t.class_names == table.class_names
        assert np.array_equal(t.width, table.width) and np.array_equal(t.label, table.label)
        assert t.skipped == table.skipped
        # renders: bit-exact PNG round trip with metadata
        assert art.renders_present(conv.name).tolist() == [True, False, False, True, False, False]
        u3 = art.unit(f"{conv.name}:3")
        assert [r.objective for r in u3.renders] == ["channel", "negative"]
        src = [r for r in renders if r.unit == 3 and r.objective == "negative"][0]
        got = u3.renders[1]
        assert np.array_equal(got.image, src.image)
        assert got.seed == src.seed and got.steps == src.steps and got.param == src.param
        assert got.act_final == pytest.approx(src.act_final) and math.isnan(got.dataset_max_ratio)
        assert np.array_equal(got.act_trace, src.act_trace)
        # examples: lossless PNG patches, missing example dropped from the unit view
        u4 = art.unit(conv.name, 4)
        assert len(u4.examples["top"]) == 2 and u4.examples["bottom"] == []
        ex = u4.examples["top"][0]
        assert ex.score == pytest.approx(float(top.score[1, 0]))
        assert ex.image_index == top.image_index[1, 0] and ex.image_path == table.paths[ex.image_index]
        assert ex.loc == tuple(top.loc[1, 0]) and ex.box == tuple(top.box[1, 0])
        assert np.array_equal(ex.patch, top.patches[1][0])
        # bottom: JPEG, lossy but close
        b = art.unit(conv.name, 1).examples["bottom"][0]
        assert b.encoded[:3] == b"\xff\xd8\xff"
        assert np.abs(b.patch.astype(int) - bottom.patches[0][0].astype(int)).mean() < 6
        assert art.examples_present(conv.name, "top").tolist() == [False, True, False, False, True, False]
        # bulk example set, patches lazy
        es = art.examples(conv.name, "top")
        assert np.array_equal(es.units, top.units) and np.array_equal(es.image_index, top.image_index)
        assert es.patches[1][2] is None and np.array_equal(es.patches[0][1], top.patches[0][1])
        # stats and probe
        st = art.stats(conv.name)
        assert np.array_equal(st.units, stats.units) and np.allclose(st.quantiles, stats.quantiles)
        assert np.array_equal(st.sketch["hist"], stats.sketch["hist"]) and st.sketch_attrs == stats.sketch_attrs
        assert art.unit(conv.name, 5).stats["p99.9"] == pytest.approx(stats.quantiles[2, 3])
        assert art.unit(conv.name, 2).stats == {}
        pb = art.probe(conv.name)
        assert np.array_equal(pb.image_index, [2, 7]) and np.array_equal(pb.acts, probe.acts)
        assert art.probe(fc.name) is None and art.stats(fc.name) is None and art.examples(fc.name) is None
        assert art.renders(fc.name) == []
        assert set(art.required_features) >= {"renders", "examples", "stats", "probe", "png", "jpeg", "dataset"}


def test_extend_in_batches_and_replace(tmp_path):
    conv = fake_layers()[0]
    path = tmp_path / "a.h5"
    first = fake_renders(conv, [0, 1], seed=1)
    with ArtifactWriter(path, fake_model_info(), "render", {}) as w:
        w.ensure_layer(conv)
        w.put_renders(conv.name, first[:1])
        w.put_renders(conv.name, first[1:])  # second batch in the same session
    second = fake_renders(conv, [1, 2], seed=9)
    with ArtifactWriter(path, fake_model_info(), "render", {"units": "1:3"}) as w:
        assert w.existing is not None and w.existing.renders_present(conv.name).sum() == 2
        w.ensure_layer(conv)
        w.put_renders(conv.name, second)
    with open_artifact(path) as art:
        assert len(art.provenance) == 2
        assert art.renders_present(conv.name).tolist()[:4] == [True, True, True, False]
        assert np.array_equal(art.unit(conv.name, 0).renders[0].image, first[0].image)
        u1 = art.unit(conv.name, 1).renders
        assert len(u1) == 1 and np.array_equal(u1[0].image, second[0].image)  # replaced, not duplicated


def test_collect_added_to_render_file_keeps_renders(tmp_path):
    path = make_artifact(tmp_path / "a.h5", collect=False)
    conv = fake_layers()[0]
    with ArtifactWriter(path, fake_model_info(), "collect", {}) as w:
        w.ensure_layer(conv)
        w.set_dataset(fake_image_table(6))
        w.put_examples(conv.name, "top", fake_examples(conv, [0, 1], 6, k=2))
    with open_artifact(path) as art:
        assert art.renders_present(conv.name).all()
        assert art.examples_present(conv.name).tolist() == [True, True, False, False, False, False]
        assert len(art.dataset) == 6


def test_k_differs_between_batches_is_padded(tmp_path):
    conv = fake_layers()[0]
    path = tmp_path / "a.h5"
    with ArtifactWriter(path, fake_model_info(), "collect", {}) as w:
        w.ensure_layer(conv)
        w.set_dataset(fake_image_table(8))
        w.put_examples(conv.name, "top", fake_examples(conv, [0], 8, k=2))
        w.put_examples(conv.name, "top", fake_examples(conv, [1], 8, k=4))
    with open_artifact(path) as art:
        es = art.examples(conv.name, "top")
        assert es.score.shape == (2, 4) and (es.image_index[0, 2:] == -1).all()


def test_refuses_other_model_other_layer_shape_other_dataset(tmp_path):
    path = make_artifact(tmp_path / "a.h5")
    before = open(path, "rb").read()
    with pytest.raises(ScopeError, match="fingerprint"):
        with ArtifactWriter(path, fake_model_info("f" * 64), "render", {}):
            pass
    conv = fake_layers()[0]
    with pytest.raises(ScopeError, match="already stored"):
        with ArtifactWriter(path, fake_model_info(), "render", {}) as w:
            w.ensure_layer(LayerRecord(conv.name, conv.units + 1, (conv.units + 1, 8, 8), 11, 8, -4))
    with pytest.raises(ScopeError, match="another image set"):
        with ArtifactWriter(path, fake_model_info(), "collect", {}) as w:
            w.set_dataset(fake_image_table(5, prefix="other"))
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.h5"]  # no temp files left


def test_exception_leaves_target_untouched(tmp_path):
    path = make_artifact(tmp_path / "a.h5")
    before = open(path, "rb").read()
    with pytest.raises(RuntimeError):
        with ArtifactWriter(path, fake_model_info(), "render", {}) as w:
            w.ensure_layer(fake_layers()[0])
            w.put_renders(fake_layers()[0].name, fake_renders(fake_layers()[0], [0], seed=77))
            raise RuntimeError("killed")
    assert open(path, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.h5"]


def test_writer_input_errors(tmp_path):
    conv = fake_layers()[0]
    with pytest.raises(ScopeError, match="directory"):
        ArtifactWriter(tmp_path, fake_model_info(), "x", {}).open()
    with pytest.raises(ScopeError, match="fingerprint"):
        ArtifactWriter(tmp_path / "a.h5", {"spec": "x"}, "x", {})
    with ArtifactWriter(tmp_path / "a.h5", fake_model_info(), "x", {}) as w:
        with pytest.raises(ScopeError, match="ensure_layer"):
            w.put_renders(conv.name, fake_renders(conv, [0]))
        w.ensure_layer(conv)
        with pytest.raises(ScopeError, match="out of range"):
            w.put_renders(conv.name, fake_renders(conv, [conv.units]))
        bad = fake_renders(conv, [0])[0]
        bad.image = bad.image.astype(np.float32)
        with pytest.raises(ScopeError, match="uint8"):
            w.put_renders(conv.name, [bad])
        with pytest.raises(ScopeError, match="sorted"):
            t = fake_image_table(3)
            t.paths = t.paths[::-1]
            w.set_dataset(t)
        with pytest.raises(ScopeError, match="patch format"):
            w.put_examples(conv.name, "top", fake_examples(conv, [0], 3), patch_format="webp")
    # examples pointing beyond the image table are refused at commit, target not created
    with pytest.raises(ScopeError, match="image table"):
        with ArtifactWriter(tmp_path / "b.h5", fake_model_info(), "x", {}) as w:
            w.ensure_layer(conv)
            w.put_examples(conv.name, "top", fake_examples(conv, [0], 50, k=2))
    assert not (tmp_path / "b.h5").exists()


def test_provenance_has_no_home_dir_and_file_mode(tmp_path):
    path = tmp_path / "a.h5"
    home = os.path.expanduser("~")
    with ArtifactWriter(path, fake_model_info(), "render", {"out": os.path.join(home, "x", "y.h5"), "n": np.int64(3)}) as w:
        w.ensure_layer(fake_layers()[1])
    with open_artifact(path) as art:
        assert art.provenance[0]["params"] == {"out": "~/x/y.h5", "n": 3}
    with h5py.File(path, "r") as f:
        assert home not in f["provenance/runs"].asstr()[0]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("name", ["layer4.2.conv3", "a/b", "100%", "", ".", "x%2Fy", "ünï/cødé"])
def test_layer_names_escape_round_trip(tmp_path, name):
    assert unescape_name(escape_name(name)) == name
    assert "/" not in escape_name(name) and escape_name(name) not in ("", ".")
    path = tmp_path / "a.h5"
    rec = LayerRecord(name, 2, (2, 3, 3), 1, 1, 0)
    with ArtifactWriter(path, fake_model_info(), "x", {}) as w:
        w.ensure_layer(rec)
        w.put_renders(name, fake_renders(rec, [1]))
    with open_artifact(path) as art:
        assert art.layers == [name] and art.layer(name) == rec
        assert art.unit(name, 1).renders[0].image.shape == (32, 32, 3)


def test_reader_errors_are_scope_errors(tmp_path):
    path = make_artifact(tmp_path / "a.h5", renders=False)
    with open_artifact(path) as art:
        with pytest.raises(ScopeError, match="did you mean"):
            art.layer("head.fcc")
        with pytest.raises(ScopeError, match="out of range"):
            art.unit("head.fc:4")
        with pytest.raises(ScopeError, match="layer:unit"):
            art.unit("head.fc")
        with pytest.raises(ScopeError, match="top"):
            art.examples("head.fc", "middle")
        assert art.fingerprint == FAKE_FINGERPRINT


def test_concurrent_writers_never_lose_a_result(tmp_path):
    path = make_artifact(tmp_path / "a.h5", collect=False, units=[0])
    conv = fake_layers()[0]
    slow = ArtifactWriter(path, fake_model_info(), "render", {"units": "1"})
    slow.open()
    slow.ensure_layer(conv)
    slow.put_renders(conv.name, fake_renders(conv, [1], seed=4))
    with ArtifactWriter(path, fake_model_info(), "render", {"units": "2"}) as fast:
        fast.ensure_layer(conv)
        fast.put_renders(conv.name, fake_renders(conv, [2], seed=5))
    with pytest.raises(ScopeError, match="scope pack"):
        slow.commit()
    conflict = [n for n in os.listdir(tmp_path) if "conflict" in n]
    assert len(conflict) == 1 and not [n for n in os.listdir(tmp_path) if ".tmp" in n]
    with open_artifact(path) as art:
        assert art.renders_present(conv.name).tolist()[:3] == [True, False, True]
    with open_artifact(tmp_path / conflict[0]) as art:
        assert art.renders_present(conv.name).tolist()[:3] == [True, True, False]


def test_example_paths_of_a_large_table_read_per_index(tmp_path, monkeypatch):
    import scopecli.artifact.reader as reader

    path = make_artifact(tmp_path / "a.h5", renders=False)
    monkeypatch.setattr(reader, "PATH_TABLE_LOAD_LIMIT", 0)
    with open_artifact(path) as art:
        u = art.unit("head.fc:1")
        assert art._dataset is None  # the whole table was not loaded
        assert [e.image_path for e in u.examples["top"]] == [
            fake_image_table(12).paths[e.image_index] for e in u.examples["top"]]


def test_checkpoint_keeps_work_after_a_crash(tmp_path):
    conv = fake_layers()[0]
    path = tmp_path / "a.h5"
    with pytest.raises(RuntimeError):
        with ArtifactWriter(path, fake_model_info(), "render", {"units": "all"}) as w:
            w.ensure_layer(conv)
            w.put_renders(conv.name, fake_renders(conv, [0, 1]))
            w.checkpoint()
            w.put_renders(conv.name, fake_renders(conv, [2]))
            w.checkpoint()
            w.put_renders(conv.name, fake_renders(conv, [3]))
            raise RuntimeError("killed after two checkpoints")
    with open_artifact(path) as art:
        assert art.renders_present(conv.name).tolist() == [True, True, True, False, False, False]
        assert [r["command"] for r in art.provenance] == ["render"]
    assert sorted(os.listdir(tmp_path)) == ["a.h5"]
    with ArtifactWriter(path, fake_model_info(), "render", {}) as w:
        w.ensure_layer(conv)
        w.put_renders(conv.name, fake_renders(conv, [3]))
        w.checkpoint()
    with open_artifact(path) as art:
        assert len(art.provenance) == 2 and art.renders_present(conv.name).sum() == 4


def test_examples_without_patches(tmp_path):
    conv = fake_layers()[0]
    ex = fake_examples(conv, [0, 1], 8, k=2)
    ex.patches = [[None, None], [ex.patches[1][0], None]]
    path = tmp_path / "a.h5"
    with ArtifactWriter(path, fake_model_info(), "collect", {"patches": False}) as w:
        w.ensure_layer(conv)
        w.set_dataset(fake_image_table(8))
        w.put_examples(conv.name, "top", ex)
    with open_artifact(path) as art:
        u0 = art.unit(conv.name, 0).examples["top"]
        assert [e.image_index for e in u0] == ex.image_index[0].tolist() and u0[0].patch is None
        assert art.unit(conv.name, 1).examples["top"][0].patch.shape == (16, 16, 3)
        assert art.examples(conv.name, "top").patches[0][0] is None
    from scopecli.artifact.validate import validate

    assert validate(path) == []
