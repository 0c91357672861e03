"""Microscope's model zoo by name: Places365 checkpoints for torchvision models, the timm and open_clip
families (offline: random weights, or pretrained weights only from the local cache), `scope models`."""

import json

import pytest
import torch
import torchvision

from conftest import assert_one_line_error
from scopecli.model import model_fingerprint, resolve_model
from scopecli.model.weights import random_init


def _units(row: dict) -> int:
    return row.get("channels", row.get("units"))


def _places365_alexnet() -> torch.nn.Module:
    model = random_init(lambda: torchvision.models.alexnet(weights=None, num_classes=365))
    with torch.no_grad():
        model.classifier[6].bias.fill_(0.5)  # not what a seeded random init gives: the file's own weights
    return model


def test_places365_checkpoint_builds_a_365_class_model(tmp_path, scope_cli):
    src = _places365_alexnet()
    path = tmp_path / "alexnet_places365.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    r = scope_cli("layers", "alexnet", "--weights", path, "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["model"]["weights"] == "file:alexnet_places365.pth.tar"
    assert data["model"]["fingerprint"] == model_fingerprint(src)
    last = next(row for row in data["layers"] if row["name"] == "classifier.6")
    assert _units(last) == 365


def test_places365_official_csail_layout(tmp_path):
    """The CSAIL files were trained with the PyTorch ImageNet example, which wraps only AlexNet's
    `features` in DataParallel: keys `features.module.0.weight` next to `classifier.1.weight`, inside a
    training checkpoint with epoch/arch/best_prec1."""
    src = _places365_alexnet()
    state = {(k.replace("features.", "features.module.", 1) if k.startswith("features.") else k): v
             for k, v in src.state_dict().items()}
    path = tmp_path / "alexnet_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "alexnet", "state_dict": state, "best_prec1": torch.tensor(53.2)}, path)
    loaded = resolve_model("alexnet", weights=str(path))
    assert loaded.module.classifier[6].out_features == 365
    assert loaded.fingerprint == model_fingerprint(src)


def test_places365_resnet18_and_other_class_counts(tmp_path):
    src = random_init(lambda: torchvision.models.resnet18(weights=None, num_classes=365))
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    loaded = resolve_model("resnet18", weights=str(path))
    assert loaded.module.fc.out_features == 365 and loaded.fingerprint == model_fingerprint(src)
    # googlenet (InceptionV1): a converted Places365 state dict loads the same way
    g = random_init(lambda: torchvision.models.googlenet(weights=None, num_classes=365, aux_logits=False, init_weights=False))
    gpath = tmp_path / "googlenet_places365.pth"
    torch.save(g.state_dict(), gpath)
    assert resolve_model("googlenet", weights=str(gpath)).module.fc.out_features == 365


def test_old_densenet_key_names_load(tmp_path):
    src = random_init(lambda: torchvision.models.densenet121(weights=None, num_classes=365))
    import re

    old = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    state = {old.sub(r"\1.\2", k): v for k, v in src.state_dict().items()}
    assert any(".norm.1." in k for k in state)
    path = tmp_path / "densenet_places365.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    assert resolve_model("densenet121", weights=str(path)).fingerprint == model_fingerprint(src)


def test_wrong_files_still_refused(tmp_path, scope_cli):
    # another architecture's file is not "fixed" by the class count: one line, exit 2
    other = random_init(lambda: torchvision.models.resnet18(weights=None, num_classes=365))
    path = tmp_path / "resnet18_places365.pth"
    torch.save(other.state_dict(), path)
    assert_one_line_error(scope_cli("layers", "alexnet", "--weights", path), 2, "does not match the model")
    # same architecture, a classifier whose input width differs: a shape mismatch, not a rebuild
    a = random_init(lambda: torchvision.models.alexnet(weights=None)).state_dict()
    a["classifier.6.weight"] = torch.zeros(365, 17)
    bad = tmp_path / "bad.pth"
    torch.save(a, bad)
    assert_one_line_error(scope_cli("layers", "alexnet", "--weights", bad), 2, "shape mismatch")
