"""`scope pack`: collect shards merge exactly like one run; renders unite; conflicts and mismatches refused."""

import hashlib

import numpy as np
import pytest
import torch
from artifact_factory import fake_image, fake_layers, fake_model_info, fake_renders, make_artifact
from conftest import assert_one_line_error

from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.pack import pack
from scopecli.artifact.validate import validate
from scopecli.collect.stats import LayerStats
from scopecli.core.errors import ScopeError
from scopecli.core.records import ExampleSet, ImageTable, ProbeBlock

N_IMG, K, P = 10, 3, 5
CONV = fake_layers()[0]


def _world(seed=0):
    """Activations of every unit at every position of every image: the ground truth both runs see."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_IMG, CONV.units, P)).astype(np.float32)


def _table(ids):
    paths = [f"img/{i:03d}.jpg" for i in ids]
    return ImageTable(paths=paths, sha256=[hashlib.sha256(p.encode()).hexdigest() for p in paths],
                      width=np.full(len(ids), 100, np.int32), height=np.full(len(ids), 90, np.int32),
                      label=np.array([i % 2 for i in ids], np.int32), class_names=["even", "odd"],
                      skipped=[(f"img/bad{ids[0]}.jpg", "truncated")])


def _patch(img, unit, pos):
    return fake_image(np.random.default_rng(img * 1000 + unit * 10 + pos), 12, 12)


def _examples(acts, ids, largest):
    """Top/bottom-K over the given global image ids, indexed into that run's own (sorted) table."""
    units = np.arange(CONV.units)
    score = np.full((len(units), K), np.nan, np.float32)
    ii = np.full((len(units), K), -1, np.int64)
    loc = np.zeros((len(units), K, 2), np.int32)
    box = np.zeros((len(units), K, 4), np.int32)
    patches = []
    for u in units:
        best = [(acts[g, u].max() if largest else acts[g, u].min(), local, g) for local, g in enumerate(ids)]
        best.sort(key=lambda t: (-t[0] if largest else t[0], t[1]))
        row = []
        for j, (s, local, g) in enumerate(best[:K]):
            pos = int(acts[g, u].argmax() if largest else acts[g, u].argmin())
            score[u, j], ii[u, j], loc[u, j] = s, local, (pos, 0)
            box[u, j] = (pos * 8, 0, pos * 8 + 11, 11)
            row.append(_patch(g, u, pos))
        patches.append(row + [None] * (K - len(row)))
    return ExampleSet(units=units, score=score, image_index=ii, loc=loc, box=box, patches=patches)


def _collect_run(path, acts, ids, fingerprint=None):
    ids = sorted(ids)
    st = LayerStats(CONV.units, torch.device("cpu"))
    v = torch.from_numpy(acts[ids])
    st.update(v, v.mean(2), v.var(2, correction=0), v.amax(2), v.amin(2))
    with ArtifactWriter(path, fake_model_info(*( [fingerprint] if fingerprint else [])), "collect", {"ids": ids}) as w:
        w.ensure_layer(CONV)
        w.set_dataset(_table(ids))
        w.put_examples(CONV.name, "top", _examples(acts, ids, True), patch_format="png")
        w.put_examples(CONV.name, "bottom", _examples(acts, ids, False), patch_format="png")
        w.put_stats(CONV.name, st.finalize())
        w.put_probe(CONV.name, ProbeBlock(np.arange(len(ids)), acts[ids].mean(2).astype(np.float16)))
    return str(path)


def test_shards_pack_exactly_like_one_run(tmp_path, scope_cli):
    acts = _world()
    full = _collect_run(tmp_path / "full.h5", acts, range(N_IMG))
    a = _collect_run(tmp_path / "a.h5", acts, range(0, N_IMG, 2))  # interleaved: indices must be remapped
    b = _collect_run(tmp_path / "b.h5", acts, range(1, N_IMG, 2))
    res = scope_cli("pack", a, b, "-o", tmp_path / "ab.h5", "--quiet")
    assert res.code == 0, res.stderr
    assert validate(tmp_path / "ab.h5") == []
    with open_artifact(full) as F, open_artifact(tmp_path / "ab.h5") as M:
        assert M.dataset.paths == F.dataset.paths and M.dataset_fingerprint == F.dataset_fingerprint
        assert np.array_equal(M.dataset.label, F.dataset.label)
        assert sorted(M.dataset.skipped) == [("img/bad0.jpg", "truncated"), ("img/bad1.jpg", "truncated")]
        for which in ("top", "bottom"):
            ef, em = F.examples(CONV.name, which), M.examples(CONV.name, which)
            assert np.array_equal(ef.image_index, em.image_index)
            assert np.array_equal(ef.score, em.score) and np.array_equal(ef.loc, em.loc) and np.array_equal(ef.box, em.box)
            for u in range(CONV.units):
                for j in range(K):
                    assert np.array_equal(ef.patches[u][j], em.patches[u][j])
        sf, sm = F.stats(CONV.name), M.stats(CONV.name)
        assert np.array_equal(sf.count, sm.count) and np.array_equal(sf.sketch["hist"], sm.sketch["hist"])
        assert np.array_equal(sf.min, sm.min) and np.array_equal(sf.max, sm.max)
        assert np.array_equal(sf.quantiles, sm.quantiles) and np.array_equal(sf.frac_pos, sm.frac_pos)
        assert np.allclose(sf.mean, sm.mean, rtol=1e-12) and np.allclose(sf.std, sm.std, rtol=1e-12)
        pf, pm = F.probe(CONV.name), M.probe(CONV.name)
        assert np.array_equal(pf.image_index, pm.image_index) and np.array_equal(pf.acts, pm.acts)
        runs = [r["command"] for r in M.provenance]
        assert runs == ["collect", "collect", "pack"]


def test_renders_unite_and_conflicts_need_prefer_last(tmp_path, scope_cli):
    a = make_artifact(tmp_path / "a.h5", collect=False, units=[0, 1, 2], seed=1)
    b = make_artifact(tmp_path / "b.h5", collect=False, units=[2, 3], seed=2)
    out = tmp_path / "ab.h5"
    assert_one_line_error(scope_cli("pack", a, b, "-o", out, "--quiet"), 2, "--prefer last")
    assert not out.exists()
    res = scope_cli("pack", a, b, "-o", out, "--prefer", "last", "--quiet")
    assert res.code == 0, res.stderr
    with open_artifact(out) as m, open_artifact(b) as B:
        assert m.renders_present(CONV.name).tolist() == [True, True, True, True, False, False]
        assert np.array_equal(m.unit(f"{CONV.name}:2").renders[0].image, B.unit(f"{CONV.name}:2").renders[0].image)
    # the same file twice is not a conflict
    res = scope_cli("pack", a, a, "-o", tmp_path / "aa.h5", "--quiet")
    assert res.code == 0, res.stderr


def test_overlapping_collect_runs_conflict(tmp_path):
    acts = _world()
    a = _collect_run(tmp_path / "a.h5", acts, range(0, 6))
    b = _collect_run(tmp_path / "b.h5", acts, range(4, 10))
    with pytest.raises(ScopeError, match="overlapping images"):
        pack([a, b], tmp_path / "ab.h5")
    pack([a, b], tmp_path / "ab.h5", prefer="last")
    with open_artifact(tmp_path / "ab.h5") as m:
        assert len(m.dataset) == 10
        top = m.examples(CONV.name, "top")
        paths = m.dataset.paths
        assert all(int(paths[i][4:7]) >= 4 for i in top.image_index.reshape(-1))  # b's examples kept


def test_pack_refusals(tmp_path, scope_cli):
    a = make_artifact(tmp_path / "a.h5", collect=False)
    other = make_artifact(tmp_path / "o.h5", collect=False, fingerprint="e" * 64)
    assert_one_line_error(scope_cli("pack", a, other, "-o", tmp_path / "x.h5"), 2, "another model")
    existing = make_artifact(tmp_path / "e.h5", collect=False)
    before = open(existing, "rb").read()
    assert_one_line_error(scope_cli("pack", a, "-o", existing), 2, "--force")
    assert open(existing, "rb").read() == before
    assert_one_line_error(scope_cli("pack", a, tmp_path / "missing.h5", "-o", tmp_path / "x.h5"), 2, "no such file")
    assert_one_line_error(scope_cli("pack", a, a, "-o", tmp_path / "x.h5", "--prefer", "first"), 2, "prefer")
    assert not (tmp_path / "x.h5").exists()


def test_pack_into_an_input(tmp_path):
    conv = CONV
    a = make_artifact(tmp_path / "a.h5", collect=False, units=[0])
    b = tmp_path / "b.h5"
    with ArtifactWriter(b, fake_model_info(), "render", {}) as w:
        w.ensure_layer(conv)
        w.put_renders(conv.name, fake_renders(conv, [5], seed=3))
    pack([a, b], a)
    with open_artifact(a) as m:
        assert m.renders_present(conv.name).tolist() == [True, False, False, False, False, True]
