"""Strongest inputs (the Circuits view): gradient x input over each unit's top examples, stored as the
`inputs` element by `scope circuits` and `scope collect --circuits`.

Known answers: for conv -> ReLU -> conv with every input channel the same positive map, a unit's inputs
are its weights (kernel sums) times one positive number; on a nonlinear tiny model the top 3 agree with
brute-force ablation. Bad inputs: an input layer deeper than the unit's, one off its path, a unit that
never fires.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tinymodels
from collect_builders import noise_images
from conftest import assert_one_line_error
from scopecli.artifact import open_artifact
from scopecli.artifact.validate import validate

COLLECT = ["--top-k", 8, "--bottom-k", 1, "--batch", 8, "--workers", 0, "--probe", 3, "--patch-size", 16,
           "--input-size", 20, "--quiet"]


@pytest.fixture
def data(tmp_path):
    noise_images(tmp_path / "data", 24, 20, seed=1)
    return tmp_path / "data"


@pytest.fixture
def solid(tmp_path):
    """Images of one colour each: every position of a layer sees the same input."""
    folder = tmp_path / "solid"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i in range(12):
        Image.fromarray(np.full((20, 20, 3), rng.integers(0, 256, 3), np.uint8)).save(folder / f"s_{i:02d}.png")
    return folder


U32 = 2.0**-24  # float32 unit roundoff
# How far a stored attribution may lie from a * W_sum[u, v] (a: the one positive activation every channel of
# layer 1 holds) in float32, on any CPU and thread count: it is a float32 sum over the P = 20*20 source
# positions of a_v * grad, each grad entry a sum of at most 9 kernel taps (spread over tied maxima, 1/T each),
# a_v a 3-term dot plus bias, stored as float32; a sum of n terms in any order errs by at most n*u*sum|terms|
# (Higham 2002, 4.2), here n <= 9 + 400 + 1 + 4 (+ 11 slack) and sum|terms| = a * sum|W[u, v]|. Relative to
# the kernel sum (the test's is float64) that is N_ROUND * u * cond_v, cond_v = sum|W[u, v]| / |W_sum[u, v]|:
# 2.5e-5 for a 1x1 conv, up to 1e-2 for these 3x3 kernels whose taps nearly cancel (cond_v up to 383).
N_ROUND = 9 + 400 + 1 + 4 + 9 + 2


def _known_answer(path, weights: np.ndarray, abs_weights: np.ndarray):
    """Every firing unit's stored inputs are its weight row (kernel sums `weights`, of |W| `abs_weights`)
    times one positive number, sorted by sign, within float32 rounding (N_ROUND above) of each channel."""
    with open_artifact(path) as art:
        for u in range(5):
            ins = art.unit("2", u).inputs
            assert ins.source_layer == "1" and ins.examples > 0 and ins.note == ""
            w, err = weights[u], N_ROUND * U32 * abs_weights[u]  # err: the bound above, in kernel-sum units
            # the order is decided on any CPU: neighbouring kernel sums (and 0, for the sign) lie further
            # apart than both their rounding bounds, so exact lists are right to ask for
            o = np.argsort(-w, kind="stable")
            assert (-np.diff(w[o]) > err[o][1:] + err[o][:-1]).all() and (np.abs(w) > err).all()
            want_pos = [int(v) for v in np.argsort(-w, kind="stable") if w[v] > 0][:16]
            want_neg = [int(v) for v in np.argsort(w, kind="stable") if w[v] < 0][:16]
            assert [r.unit for r in ins.positive] == want_pos
            assert [r.unit for r in ins.negative] == want_neg
            assert [r.unit for r in ins] == want_pos + want_neg  # positive first, then negative
            got = np.array([r.unit for r in ins])
            ratio = np.array([r.attribution for r in ins]) / w[got]
            # one positive scale: every channel's ratio within its own rounding bound of the common scale
            # (a wrong weight, tap or channel moves a ratio by O(1); the bound is 2.5e-5 where cond_v is 1)
            rel = err[got] / np.abs(w[got])  # each ratio is a * (1 + d_v) with |d_v| <= rel_v
            ref = int(np.argmin(rel))
            assert ratio.min() > 0
            np.testing.assert_array_less(np.abs(ratio - ratio[ref]), 1.01 * ratio[ref] * (rel + rel[ref]))
        never = art.unit("2", 5).inputs
        assert list(never) == [] and never.examples == 0 and "never fires" in never.note


def test_1x1_conv_pair_inputs_are_its_weights(tmp_path, data, scope_cli):
    out = tmp_path / "c.h5"
    assert scope_cli("collect", "tinymodels:circuit_1x1", "--data", data, "-o", out, "--layer", "1,2", *COLLECT).code == 0
    r = scope_cli("circuits", out, "--data", data, "--layer", "2", "--json")  # --from: the previous default layer
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["layers"] == [{"layer": "2", "from": "1", "units": 6, "never_fire": [5]}]
    assert any("never fire" in n and "for 5" in n for n in summary["notes"])
    w = tinymodels.circuit_1x1()[2].weight.detach()[:, :, 0, 0].double().numpy()
    _known_answer(out, w, np.abs(w))
    assert validate(out) == []


def test_3x3_conv_pair_inputs_are_its_kernel_sums(tmp_path, solid, scope_cli):
    out = tmp_path / "c.h5"
    r = scope_cli("collect", "tinymodels:circuit_3x3", "--data", solid, "-o", out, "--layer", "2", *COLLECT,
                  "--circuits", "1")
    assert r.code == 0, r.stderr
    w = tinymodels.circuit_3x3()[2].weight.detach().double()
    _known_answer(out, w.sum(dim=(2, 3)).numpy(), w.abs().sum(dim=(2, 3)).numpy())


def test_gradient_x_input_ranks_like_brute_force_ablation(tmp_path, data, scope_cli):
    """Zeroing each input channel in turn and measuring the drop of the unit's maximum, averaged over the
    same top examples: the 3 channels whose removal hurts most are the 3 strongest positive inputs."""
    from scopecli.data.dataset import ModelInputs
    from scopecli.model.capture import capture

    noise_images(data, 48, 20, seed=1)
    out = tmp_path / "ab.h5"
    assert scope_cli("collect", "tinymodels:ablation_net", "--data", data, "-o", out, "--layer", "4", *COLLECT,
                     "--circuits", "1").code == 0
    from scopecli.model.weights import random_init

    model = random_init(tinymodels.ablation_net).eval()  # the factory's model as scope built it (seeded init)
    with open_artifact(out) as art:
        table, ex = art.dataset, art.examples("4", "top")
        files = [data / p for p in table.paths]
        pre = art.model["preprocess"]
        for row, u in enumerate(ex.units):
            rows = [int(m) for m, s in zip(ex.image_index[row], ex.score[row]) if m >= 0 and s > 0]
            ds = ModelInputs([files[m] for m in rows], range(len(rows)), pre["resize"], pre["crop"])
            x = torch.stack([ds[i]["image"] for i in range(len(rows))]).float() / 255.0
            x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
            with torch.no_grad():
                base = capture(model, x, ["4"])["4"][:, u].flatten(1).amax(1).mean().item()
            drops = []
            for v in range(8):
                def zero(module, inputs, output, v=v):
                    output = output.clone()
                    output[:, v] = 0
                    return output

                handle = model[1].register_forward_hook(zero)
                with torch.no_grad():
                    drops.append(base - capture(model, x, ["4"])["4"][:, u].flatten(1).amax(1).mean().item())
                handle.remove()
            ins = art.unit("4", int(u)).inputs
            assert ins.examples == len(rows)
            by_attribution = [r.unit for r in ins.positive[:3]]
            by_ablation = [int(v) for v in np.argsort(-np.array(drops))[:3]]
            assert set(by_attribution) == set(by_ablation), (u, by_attribution, by_ablation, drops)


def test_inputs_read_back_show_and_export(tmp_path, data, scope_cli):
    out = tmp_path / "c.h5"
    assert scope_cli("collect", "tinymodels:circuit_1x1", "--data", data, "-o", out, "--layer", "1,2", *COLLECT,
                     "--circuits", "prev").code == 0
    r = scope_cli("show", out, "2:0", "--json")
    assert r.code == 0, r.stderr
    shown = json.loads(r.stdout)["inputs"]
    assert shown["from"] == "1" and len(shown["rows"]) == 32 and shown["rows"][0]["attribution"] > 0
    r = scope_cli("show", out, "2:5", "--json")
    assert "never fires" in json.loads(r.stdout)["inputs"]["note"]
    r = scope_cli("show", out, "2:0")
    assert r.code == 0 and "strongest inputs from 1" in r.stdout
    card = tmp_path / "card.png"
    assert scope_cli("show", out, "2:0", "-o", card).code == 0
    with Image.open(card) as im:
        assert im.height > 300
    from export_helpers import check_site_links

    from scopecli.export import export_site

    site = tmp_path / "site"
    export_site([out], site)
    page = (site / "m/01-c/02-2/u/0.html").read_text()
    assert "Strongest inputs" in page
    with open_artifact(out) as art:
        first = art.unit("2", 0).inputs[0]
    assert f'href="../../01-1/u/{first.unit}.html"' in page  # linked to the input unit's page
    assert "never fires" in (site / "m/01-c/02-2/u/5.html").read_text()
    check_site_links(site)


def test_bad_inputs_are_one_line_errors(tmp_path, data, scope_cli):
    out = tmp_path / "c.h5"
    assert scope_cli("collect", "tinymodels:circuit_1x1", "--data", data, "-o", out, "--layer", "1,2", *COLLECT).code == 0
    before = out.read_bytes()
    # the input layer runs after the unit's layer
    assert_one_line_error(scope_cli("circuits", out, "--data", data, "--layer", "1", "--from", "2"), 2, "deeper")
    assert_one_line_error(scope_cli("circuits", out, "--data", data, "--layer", "2", "--from", "2"), 2, "its own input")
    assert_one_line_error(scope_cli("circuits", out, "--data", data, "--layer", "2", "--from", "nosuch"), 2,
                          "unknown layer 'nosuch'")
    # the first default layer has no earlier default layer
    assert_one_line_error(scope_cli("circuits", out, "--data", data, "--layer", "1"), 2, "--from")
    # images that are not the ones collect read
    other = tmp_path / "other"
    noise_images(other, 24, 20, seed=9)
    assert_one_line_error(scope_cli("circuits", out, "--data", other, "--layer", "2"), 2, "differs from the image")
    assert_one_line_error(scope_cli("circuits", out, "--data", tmp_path / "nope", "--layer", "2"), 2, "not found")
    assert out.read_bytes() == before  # nothing written
    # collect refuses a bad --circuits layer before its long run
    out2 = tmp_path / "d.h5"
    assert_one_line_error(scope_cli("collect", "tinymodels:circuit_1x1", "--data", data, "-o", out2, "--layer", "1",
                                    *COLLECT, "--circuits", "2"), 2, "no collected layer runs after it")
    assert not out2.exists()


def test_an_input_layer_off_the_path_is_refused(tmp_path, data, scope_cli):
    out = tmp_path / "b.h5"
    assert scope_cli("collect", "tinymodels:two_branch", "--data", data, "-o", out, "--layer", "right", *COLLECT).code == 0
    assert_one_line_error(scope_cli("circuits", out, "--data", data, "--layer", "right", "--from", "left"), 2,
                          "not on the path")
    r = scope_cli("circuits", out, "--data", data, "--layer", "right", "--from", "stem", "--json")
    assert r.code == 0, r.stderr
