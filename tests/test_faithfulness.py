"""Faithfulness evidence of renders (path similarity, Geirhos et al. 2023): the `faithfulness` element and
`scopecli.views.faithfulness`.

Known answers: a "render" that is a copy of the unit's top example (its model input) reaches the unit through
exactly the examples' path (similarity 1 at every layer with k=1) and is not flagged; white noise scores lower
than a photo the unit likes. Old files read as "not measured"; the element round-trips, validates, and packs
as a union by render key.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.artifact.elements.faithfulness import FaithfulnessBlock, PathEvidence
from scopecli.artifact.validate import validate
from scopecli.core.errors import ScopeError
from scopecli.core.records import LayerLayout, LayerRecord, RenderRecord
from scopecli.data.dataset import ModelInputs, PixelSpec
from scopecli.model.loaded import Preprocess
from scopecli.views.faithfulness import (baseline_unit, map_position, path_similarity, rank_correlation,
    run_path_similarity)

FIXTURE_1_1 = Path(__file__).parent / "fixtures" / "artifact-1.1.h5"
MODEL = "tinymodels:ablation_net"  # conv -> ReLU -> conv -> ReLU -> conv, 32 px
LAYERS = ("1", "3", "4")
COLLECT = ["--layer", ",".join(LAYERS), "--top-k", 8, "--bottom-k", 1, "--batch", 8, "--workers", 0, "--probe", 3,
           "--patch-size", 16, "--input-size", 32, "--weights", "random", "--quiet"]


def smooth_images(folder: Path, n: int, size: int, seed: int) -> None:
    """Photo-like pictures: smooth colour fields (bicubic 4x4 -> size), lossless."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"img_{i:03d}.png")


def render(unit: int, image: np.ndarray, diversity: int = 0, objective: str = "channel") -> RenderRecord:
    return RenderRecord(unit=unit, objective=objective, diversity_index=diversity, image=image, seed=0, steps=0,
                        size=image.shape[0], param="pixel", lr=0.0, act_final=0.0, act_robust=0.0,
                        act_trace=np.zeros(0, np.float32), time_s=0.0, dataset_max_ratio=math.nan)


def top_example_inputs(path: Path, data: Path, layer: str) -> dict[int, np.ndarray]:
    """Each unit's top-1 example as the model saw it (HxWx3 uint8, resized and cropped like collect)."""
    with open_artifact(path) as art:
        ex, paths = art.examples(layer, "top"), art.dataset.paths
        p = art.model["preprocess"]
    pre = Preprocess(mean=tuple(p["mean"]), std=tuple(p["std"]), resize=p["resize"], crop=p["crop"],
                     interpolation=p["interpolation"])
    tops = {int(u): int(ex.image_index[i, 0]) for i, u in enumerate(ex.units)}
    ds = ModelInputs([data / paths[m] for m in tops.values()], range(len(tops)), pre.resize, pre.crop,
                     pre.interpolation, pixels=PixelSpec.of(pre))
    return {u: ds[i]["image"].permute(1, 2, 0).numpy() for i, u in enumerate(tops)}


def put_renders(path: Path, layer: str, records: list[RenderRecord]) -> None:
    with open_artifact(path) as art:
        model = art.model
    with ArtifactWriter(path, model, "test") as w:
        w.put_renders(layer, records)


@pytest.fixture
def built(tmp_path, scope_cli):
    """An artifact of ablation_net with examples of layers 1, 3, 4 and, on layer 4, per unit: a copy of its top
    example (diversity 0) and white noise (diversity 1); plus a deepdream row that is not measured."""
    data = tmp_path / "data"
    smooth_images(data, 24, 32, seed=1)
    out = tmp_path / "a.h5"
    r = scope_cli("collect", MODEL, "--data", data, "-o", out, *COLLECT)
    assert r.code == 0, r.stderr
    copies = top_example_inputs(out, data, "4")
    rng = np.random.default_rng(5)
    rows = [render(u, copies[u]) for u in range(4)]
    rows += [render(u, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), diversity=1) for u in range(4)]
    rows.append(render(-1, copies[0], objective="deepdream"))
    put_renders(out, "4", rows)
    return out, data


def evidence(path: Path, layer: str, units) -> dict:
    with open_artifact(path) as art:
        return {(r.unit, r.diversity_index): r for u in units for r in art.unit(layer, u).renders}


def test_copy_of_a_top_example_has_its_path_at_every_layer(built):
    out, data = built
    summary = run_path_similarity(None, out, data, k=1, seed=3, device="cpu")
    assert [L["layer"] for L in summary["layers"]] == ["4"]
    row = summary["layers"][0]
    assert row["renders"] == 8 and row["measured"] == 8 and row["layers_compared"] == ["1", "3", "4"]
    with open_artifact(out) as art:
        block = art.section("4", "faithfulness").block
        assert (block.k, block.seed) == (1, 3)
        assert block.layer_names == ["1", "3", "4"]
        assert sorted(set(block.unit.tolist())) == [0, 1, 2, 3]  # the deepdream row (unit -1) is left out
        for e in block.rows():
            assert e.baseline_unit not in (-1, e.unit) and 0 <= e.baseline_unit < 4
            if e.diversity_index == 0:  # the copy: the very vectors of its one example, at every layer
                assert all(v > 0.999 for v in e.per_layer.values()), e
                assert e.similarity > 0.999 and e.baseline < e.similarity and not e.flagged
        views = [r for u in range(4) for r in art.unit("4", u).renders]
        assert len(views) == 8
        for v in views:
            assert isinstance(v.path_similarity, float) and isinstance(v.path_baseline, float)
            assert v.path_flagged == (v.path_similarity <= v.path_baseline)
        assert all(v.path_similarity > 0.999 and v.path_flagged is False for v in views if v.diversity_index == 0)
        assert art.info()["layers"][2]["faithfulness"] == 8


def test_white_noise_scores_below_a_photo_the_unit_likes(built):
    out, data = built
    run_path_similarity(None, out, data, k=8, device="cpu")
    got = evidence(out, "4", range(4))
    for u in range(4):
        photo, noise = got[(u, 0)].path_similarity, got[(u, 1)].path_similarity
        assert noise < photo, (u, noise, photo)
    assert validate(out) == []


def test_path_similarity_in_memory_is_deterministic_and_refuses_bad_layers(built):
    out, data = built
    from scopecli.model.reopen import model_for_artifact

    with open_artifact(out) as art:
        loaded = model_for_artifact(art.model)
        a = path_similarity(loaded, art, data, k=4, seed=9, device="cpu")["4"]
        b = path_similarity(loaded, art, data, layers=["4"], k=4, seed=9, device="cpu")["4"]
        assert [x.same(y) for x, y in zip(a.rows(), b.rows())] == [True] * 8
        with pytest.raises(ScopeError, match="no renders"):
            path_similarity(loaded, art, data, layers=["1"], device="cpu")
        with pytest.raises(ScopeError, match="not in"):
            path_similarity(loaded, art, data, layers=["nope"], device="cpu")
        with pytest.raises(ScopeError, match="top-k"):
            path_similarity(loaded, art, data, k=0, device="cpu")


def test_render_at_another_size_or_replaced_reads_as_not_measured(built):
    out, data = built
    put_renders(out, "4", [render(2, np.zeros((16, 16, 3), np.uint8), diversity=3)])
    run_path_similarity(None, out, data, device="cpu")
    got = evidence(out, "4", [2])
    assert got[(2, 3)].path_similarity is None and got[(2, 3)].path_flagged is None  # stored NaN: not measured
    assert got[(2, 0)].path_similarity is not None
    put_renders(out, "4", [render(2, np.full((32, 32, 3), 90, np.uint8))])  # the same key, other pixels
    got = evidence(out, "4", [2])
    assert got[(2, 0)].path_similarity is None and got[(2, 0)].path_baseline is None  # stale evidence is not shown
    assert got[(2, 1)].path_similarity is not None
    assert validate(out) == []


def test_old_files_read_as_not_measured(tmp_path):
    local = tmp_path / "old.h5"
    shutil.copy(FIXTURE_1_1, local)
    with open_artifact(local) as art:
        assert art.section("3", "faithfulness") is None
        views = art.unit("3", 0).renders
        assert views
        assert all(v.path_similarity is None and v.path_baseline is None and v.path_flagged is None for v in views)
        assert "faithfulness" not in art.info()["layers"][1]


def _block(units, k=8, seed=0, sim=0.5, layers=("1", "3", "4")) -> FaithfulnessBlock:
    rows = []
    for u in units:
        per = {n: sim - 0.1 * j for j, n in enumerate(layers)}
        s = float(np.mean(list(per.values())))
        rows.append(PathEvidence(u, "channel", 0, s, 0.1, (u + 1) % 4, s <= 0.1, per, ""))
    return FaithfulnessBlock.from_rows(rows, k, seed)


def _write_block(path: Path, block: FaithfulnessBlock, layer: str = "4") -> None:
    with open_artifact(path) as art:
        model, rec = art.model, art.layer(layer)
    with ArtifactWriter(path, model, "test") as w:
        w.ensure_layer(rec)
        w.put(layer, "faithfulness", block)


def test_write_read_roundtrip(built):
    out, _ = built
    block = _block([0, 3], sim=0.6)
    block.per_layer[1, 2] = np.nan  # not measured at one layer
    block.similarity[1] = float(np.nanmean(block.per_layer[1].astype(np.float64)))
    _write_block(out, block)
    with open_artifact(out) as art:
        got = art.section("4", "faithfulness").block
        assert got.unit.tolist() == [0, 3] and got.objective == ["channel", "channel"]
        assert got.diversity_index.dtype == np.int32 and got.per_layer.dtype == np.float32
        assert got.layer_names == ["1", "3", "4"] and (got.k, got.seed) == (8, 0) and "Spearman" in got.method
        assert [a.same(b) for a, b in zip(got.rows(), block.rows())] == [True, True]
        assert np.isnan(got.per_layer[1, 2])
        assert art.unit("4", 0).renders[0].path_similarity == pytest.approx(block.similarity[0])
        assert art.unit("4", 1).renders[0].path_similarity is None  # no evidence for unit 1
        assert art.present("4", "faithfulness").tolist() == [True, False, False, True]
    assert validate(out) == []
    _write_block(out, _block([1], k=4))  # other settings: the rows measured otherwise are replaced
    with open_artifact(out) as art:
        got = art.section("4", "faithfulness").block
        assert got.unit.tolist() == [1] and got.k == 4


def test_bad_content_is_refused_on_read_and_reported_by_validate(built):
    out, _ = built
    _write_block(out, _block([0, 1]))
    with h5py.File(out, "r+") as f:
        f["layers/4/faithfulness/similarity"][0] = 2.0
    with open_artifact(out) as art:
        with pytest.raises(ScopeError, match="outside"):
            art.unit("4", 0)
    assert any("sha256 mismatch" in p for p in validate(out))
    problems = validate(out, quick=True)  # no checksums: the reader's check speaks
    assert any("similarity" in p and "outside" in p for p in problems), problems
    with pytest.raises(ScopeError):
        _write_block(out, _block([7]))  # layer 4 has 4 units


def test_validate_checks_flag_against_figures(built):
    out, _ = built
    _write_block(out, _block([0, 1]))
    with h5py.File(out, "r+") as f:
        f["layers/4/faithfulness/flagged"][0] = 1  # 0.4 > 0.1: must not be flagged
    problems = validate(out, quick=True)
    assert any("flagged" in p for p in problems), problems


def test_pack_unites_disjoint_units_and_refuses_a_differing_duplicate(built, scope_cli, tmp_path):
    out, data = built
    run_path_similarity(None, out, data, device="cpu")
    with open_artifact(out) as art:
        full = art.section("4", "faithfulness").block
    a, b = tmp_path / "pa.h5", tmp_path / "pb.h5"
    for path, units in ((a, {0, 1}), (b, {2, 3})):
        shutil.copy(out, path)
        with h5py.File(path, "r+") as f:
            del f["layers/4/faithfulness"]
        part = FaithfulnessBlock.from_rows([e for e in full.rows() if e.unit in units], full.k, full.seed,
                                           layer_names=full.layer_names)
        _write_block(path, part)
    packed = tmp_path / "packed.h5"
    r = scope_cli("pack", a, b, "-o", packed, "--quiet")
    assert r.code == 0, r.stderr
    with open_artifact(packed) as art:
        got = art.section("4", "faithfulness").block
    assert [x.same(y) for x, y in zip(got.rows(), full.rows())] == [True] * len(full) and len(got) == len(full)
    assert validate(packed) == []
    # the same key measured differently: a conflict, unless the later input is preferred
    changed = FaithfulnessBlock.from_rows([e for e in full.rows() if e.unit == 0], full.k, full.seed)
    changed.per_layer[:] = np.nan
    changed.similarity[:] = np.nan
    changed.flagged[:] = False
    _write_block(b, changed)
    assert_one_line_error(scope_cli("pack", a, b, "-o", tmp_path / "x.h5", "--quiet"), contains="faithfulness")
    r = scope_cli("pack", a, b, "-o", tmp_path / "y.h5", "--quiet", "--prefer", "last")
    assert r.code == 0, r.stderr
    with open_artifact(tmp_path / "y.h5") as art:
        got = art.section("4", "faithfulness").block
        assert np.isnan(got.similarity[got.unit == 0]).all() and set(got.unit.tolist()) == {0, 1, 2, 3}
    _write_block(b, _block([2], k=4))  # measured with another k: the inputs do not mix
    assert_one_line_error(scope_cli("pack", a, b, "-o", tmp_path / "z.h5", "--quiet"), contains="k=4")


def test_position_mapping_correlation_and_baseline_draw():
    rec = lambda name, size, stride, start, grid: LayerRecord(name, 4, (4, *grid), size, stride, start,
                                                              LayerLayout("nchw", (0, 1, 2, 3), grid))
    a = rec("a", 3, 1, -1, (32, 32))  # 3x3 conv, padding 1
    b = rec("b", 7, 2, -3, (16, 16))
    assert map_position((5, 9), b, b) == (5, 9)  # a layer maps onto itself
    assert map_position((5, 9), b, a) == (10, 18)  # centre 10, 18 in the input
    assert map_position((0, 15), b, a) == (0, 30)
    assert map_position((10, 18), a, b) == (5, 9)
    assert map_position((31, 0), a, b) == (15, 0)  # clipped into the grid
    vec = LayerRecord("v", 4, (4, 1, 1), 32, 0, 0, LayerLayout("vector", (0, 1), (1, 1)))
    assert map_position((7, 7), a, vec) == (0, 0)
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))  # constant: not measured
    assert math.isnan(rank_correlation([1, np.nan], [1, 2]))  # fewer than 2 finite pairs
    assert rank_correlation([1, np.nan, 2, 3], [1, 5, 2, 3]) == pytest.approx(1.0)
    draws = {baseline_unit("4", 0, 0, [0, 1, 2, 3]) for _ in range(3)}
    assert len(draws) == 1 and draws.pop() in (1, 2, 3)
    assert baseline_unit("4", 0, 0, [0]) == -1


def test_the_command_stores_evidence_and_summarises_it(built, scope_cli):
    out, data = built
    r = scope_cli("faithfulness", out, "--data", data, "--layer", "4", "--k", "1", "--json", "--quiet")
    assert r.code == 0, r.stderr
    row = json.loads(r.stdout)["layers"][0]
    assert row["layer"] == "4" and row["measured"] == 8 and row["flagged"] >= 0
    got = evidence(out, "4", range(4))
    assert all(got[(u, 0)].path_similarity > 0.999 for u in range(4))  # copies of a top example
    assert validate(out) == []
    r = scope_cli("faithfulness", out, "--data", data, "--k", "0")
    assert_one_line_error(r, contains="--k")
