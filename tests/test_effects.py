"""Effects (what a unit votes for) and the ablation check: exact cases, brute force, shards, a decisive unit."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tinymodels
from collect_builders import colour_images, noise_images
from conftest import assert_one_line_error
from scopecli.artifact import open_artifact
from scopecli.artifact.validate import validate
from scopecli.model.layers import layer_table
from scopecli.views.effects import batch_attributions

COLLECT = ("--top-k", "3", "--bottom-k", "1", "--probe", "4", "--batch", "4", "--workers", "0", "--input-size", "32",
           "--quiet")


def _layouts(model, size=32):
    return {i.name: i.layout for i in layer_table(model, size)}


def test_final_layer_inputs_attribute_weight_times_activation():
    model = tinymodels.tiny_cnn().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 9, 3, 1])
    got, used, _, _ = batch_attributions(model, x, ["8"], _layouts(model), targets)
    with torch.no_grad():
        feats = model[:9](x)  # the input of the final Linear
    want = model[9].weight[targets] * feats
    assert torch.equal(used, targets)
    assert torch.allclose(got["8"].float(), want, atol=1e-5)


def _brute_force(model, x, name, target):
    """grad x activation per channel, one image at a time, by plain autograd on a hooked output."""
    out = []
    for i in range(len(x)):
        store = {}
        h = dict(model.named_modules())[name].register_forward_hook(
            lambda m, inp, o: store.setdefault("a", o) if "a" not in store else None)
        xi = x[i:i + 1].clone().requires_grad_(True)
        logits = model(xi)
        h.remove()
        (g,) = torch.autograd.grad(logits[0, int(target[i])], [store["a"]])
        out.append((g * store["a"]).detach().sum(dim=(2, 3))[0])
    return torch.stack(out).double()


@pytest.mark.parametrize("layers", [["1", "3"], ["3"]])
def test_attributions_equal_brute_force_gradient_times_activation(layers):
    model = tinymodels.tiny_cnn().eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([2, 7, 7, 0])
    got, *_ = batch_attributions(model, x, layers, _layouts(model), targets)
    for name in layers:
        assert torch.allclose(got[name], _brute_force(model, x, name, targets), atol=1e-6), name


def test_in_place_operations_after_the_layer_do_not_change_its_attribution():
    """The probed output is the layer's own output, before the in-place ReLU that follows it."""
    model = tinymodels.inplace_cnn().eval()
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 4, 0])
    got, *_ = batch_attributions(model, x, ["0", "2"], _layouts(plain), targets)
    for name in ("0", "2"):
        assert torch.allclose(got[name], _brute_force(plain, x, name, targets), atol=1e-6), name


def test_a_decisive_unit_is_found_and_its_ablation_shows_its_effect(tmp_path, scope_cli):
    data = colour_images(tmp_path / "data")
    out = tmp_path / "d.h5"
    r = scope_cli("collect", "tinymodels:decisive_net", "--data", data, "--labels", tmp_path / "labels.tsv", "-o", out,
                  "--layer", "relu,flat", *COLLECT)
    assert r.code == 0, r.stderr
    r = scope_cli("effects", out, "--data", data, "--ablate-k", "1", "--draws", "8", "--json", "--quiet")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["target"] == "label" and summary["images"] == 8 and summary["accuracy"] == 1.0
    assert validate(out) == []
    with open_artifact(out) as art:
        red = art.class_units("relu", "red")
        assert red.units[0].unit == 0 and red.units[0].share > 0.99  # unit 0 alone drives the red logit
        green = art.class_units("relu", 1)
        assert green.units[0].unit == 1
        a = red.ablation
        assert a["units"] == [0] and a["top_drop"] > 0 and a["base_acc"] == 1.0
        assert a["top_drop"] > 2 * np.mean(a["random_drop"])  # random single units: mostly not the decisive one
        assert "ablating these 1 units lowers red's logit by" in red.sentence()
        votes = art.unit("relu:0").effects
        assert [v.class_name for v in votes.votes_for] == ["red"] and not votes.votes_against
        assert votes[0].images == 4
        assert list(art.unit("relu:2").effects) == []  # blue drives nothing
        # the flat layer is the final Linear's input: attribution = weight x activation exactly
        flat = art.effects("flat")
        assert flat.mean[0, 1] == 0 and flat.mean[0, 0] > 0


def test_shards_merge_to_a_single_run(tmp_path, scope_cli):
    data = colour_images(tmp_path / "data", n=8, seed=3)
    labels = tmp_path / "labels.tsv"
    common = ("tinymodels:tiny_cnn", "--data", data, "--labels", labels, "--layer", "1,3", "--effects", *COLLECT)
    assert scope_cli("collect", *common, "-o", tmp_path / "one.h5").code == 0
    for k in (1, 2):
        r = scope_cli("collect", *common, "--shard", f"{k}/2", "-o", tmp_path / f"s{k}.h5")
        assert r.code == 0, r.stderr
    assert scope_cli("pack", tmp_path / "s1.h5", tmp_path / "s2.h5", "-o", tmp_path / "packed.h5", "--quiet").code == 0
    with open_artifact(tmp_path / "one.h5") as one, open_artifact(tmp_path / "packed.h5") as packed:
        for layer in ("1", "3"):
            a, b = one.effects(layer), packed.effects(layer)
            assert np.array_equal(a.classes, b.classes) and np.array_equal(a.images, b.images)
            assert np.allclose(a.sums, b.sums, rtol=1e-9, atol=1e-9)
            assert a.ablation is not None and b.ablation is None  # the check is rerun on the packed file
        assert [(v.class_name, round(v.attribution, 6)) for v in one.unit("3:2").effects] == \
               [(v.class_name, round(v.attribution, 6)) for v in packed.unit("3:2").effects]
    assert validate(tmp_path / "packed.h5") == []


def test_old_files_read_without_effects(tmp_path):
    old = tmp_path / "old.h5"
    shutil.copy(Path(__file__).parent / "fixtures" / "artifact-1.1.h5", old)
    with open_artifact(old) as art:
        assert art.effects("3") is None and list(art.unit("3:0").effects) == []


def test_bad_effects_inputs_are_one_line_errors(tmp_path, scope_cli):
    data = tmp_path / "data"
    noise_images(data, 6, 32, seed=4)
    out = tmp_path / "n.h5"
    assert scope_cli("collect", "tinymodels:tiny_cnn", "--data", data, "-o", out, "--layer", "3", *COLLECT).code == 0
    assert_one_line_error(scope_cli("effects", out, "--data", data, "--target", "label"), contains="no labels")
    assert_one_line_error(scope_cli("effects", out, "--data", data, "--output", "bogus"), contains="--output")
    assert_one_line_error(scope_cli("effects", out, "--data", data, "--layer", "nope"), contains="nope")
    assert_one_line_error(scope_cli("effects", out, "--data", tmp_path), contains="not there")
    r = scope_cli("effects", out, "--data", data, "--json", "--quiet")  # no labels: the model's predictions
    assert r.code == 0 and json.loads(r.stdout)["target"] == "predicted"
    with open_artifact(out) as art:
        with pytest.raises(Exception, match="no class"):
            art.class_units("3", "zebra")


def test_name_only_labels_are_matched_to_the_model_class_names(tmp_path, scope_cli):
    from types import SimpleNamespace

    from scopecli.views.effects import label_outputs

    table = SimpleNamespace(class_names=["goldfish", "tench"], label=np.array([0, 1, 1, -1]))
    outputs, how = label_outputs(table, ["tench", "Goldfish", "great white shark"])
    assert how == "names" and outputs.tolist() == [1, 0]
    assert label_outputs(table, ["tench", "shark"])[1] == "class index"  # goldfish unknown: labels are indices
    assert label_outputs(table, None)[1] == "class index"
    # end to end: a torchvision model knows its ImageNet class names; a name-only labels file is matched to them
    data = tmp_path / "data"
    noise_images(data, 4, 32, seed=6)
    names = sorted(p.name for p in data.glob("*.png"))
    labels = tmp_path / "labels.tsv"
    labels.write_text("".join(f"{n}\t{'goldfish' if i % 2 else 'tench'}\n" for i, n in enumerate(names)))
    out = tmp_path / "r.h5"
    r = scope_cli("collect", "resnet18", "--weights", "random", "--data", data, "--labels", labels, "-o", out,
                  "--layer", "layer4", *COLLECT)
    assert r.code == 0, r.stderr
    r = scope_cli("effects", out, "--data", data, "--no-ablate", "--json", "--quiet")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["labels"] == "names"
    with open_artifact(out) as art:
        block = art.effects("layer4")
        assert block.classes.tolist() == [0, 1] and block.class_names == ["tench", "goldfish"]  # ImageNet 0, 1
