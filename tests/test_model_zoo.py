"""Microscope's model zoo by name: Places365 checkpoints for torchvision models, the timm and open_clip
families (offline: random weights, or pretrained weights only from the local cache), `scope models`."""

import json

import pytest
import torch
import torchvision

from conftest import assert_one_line_error
from scopecli.model import model_fingerprint, resolve_model
from scopecli.model.families import family_for, hub
from scopecli.model.families.open_clip import CLIP_MICROSCOPE, _clip_name
from scopecli.model.families.timm import TIMM_MICROSCOPE
from scopecli.model.weights import random_init

# the input spec every 1.2 record carries (an 8-bit RGB model)
RGB_INPUT = {"channels": 3, "bit_depth": 8, "value_range": None, "channel_names": [], "display_channels": []}


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


# ---------------------------------------------------------------- timm and open_clip: never the network


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No sockets, and an empty Hugging Face hub cache of our own: what scope does must not depend on
    what this machine has cached or can reach."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("test: the network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _fake_hub_file(cache, repo_id: str, filename: str):
    """The layout huggingface_hub keeps: refs/main names a commit, snapshots/COMMIT/FILE is the file."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot / filename


def _hub_flag_untouched():
    import os

    from huggingface_hub import constants

    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


def _block_import(monkeypatch, top: str):
    """As if the extra that provides `top` were not installed."""
    import importlib

    real = importlib.import_module

    def import_module(name, *args):
        if name.split(".")[0] == top:
            raise ImportError(f"No module named '{top}'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)


def test_timm_inception_v4_random_offline(offline, scope_cli):
    pytest.importorskip("timm")
    r = scope_cli("layers", "timm/inception_v4", "--weights", "random", "--json")
    assert r.code == 0, r.stderr
    data = json.loads(r.stdout)
    model = data["model"]
    assert model["spec"] == "timm/inception_v4" and model["architecture"] == "InceptionV4"
    assert model["weights"] == "random:0" and data["input_size"] == 299
    # timm's pretrained config: mean/std 0.5, crop 299, resize floor(299 / 0.875), bicubic
    assert model["preprocess"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": 341, "crop": 299,
                                   "interpolation": "bicubic", **RGB_INPUT}
    assert any(row["default"] for row in data["layers"])
    loaded = resolve_model("timm/inception_v4", weights="random")
    assert loaded.fingerprint == model["fingerprint"]  # seeded: the same random model every time
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 3, 299, 299)).shape == (1, 1000)
    _hub_flag_untouched()


def test_timm_resnetv2_50_and_a_vit_build_and_run(offline):
    pytest.importorskip("timm")
    r = resolve_model("timm/resnetv2_50", weights="random")
    assert r.architecture == "ResNetV2" and r.name == "resnetv2_50"
    assert (r.preprocess.crop, r.preprocess.resize) == (224, 235)  # crop_pct 0.95
    with torch.no_grad():
        assert r.module(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    v = resolve_model("timm/vit_tiny_patch16_224", weights="random")
    assert v.architecture == "VisionTransformer" and v.preprocess.crop == 224
    with torch.no_grad():
        assert v.module(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_pretrained_comes_from_the_local_hub_cache_only(offline, scope_cli):
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    # not cached: one line naming the cache folder timm's hub would use, and how to work offline
    r = scope_cli("layers", "timm/resnet10t")
    assert_one_line_error(r, 2, "not in the local Hugging Face cache")
    assert str(offline / "models--timm--resnet10t.c3_in1k") in r.stderr and "--weights random" in r.stderr
    _hub_flag_untouched()
    # cached (a stand-in file in the hub's layout): loaded with the hub offline, labelled with its tag
    src = random_init(lambda: timm.create_model("resnet10t", pretrained=False))
    with torch.no_grad():
        src.fc.bias.fill_(0.125)
    safetensors_torch.save_file(src.state_dict(), str(_fake_hub_file(offline, "timm/resnet10t.c3_in1k", "model.safetensors")))
    for weights in ("DEFAULT", "c3_in1k", "resnet10t.c3_in1k"):
        loaded = resolve_model("timm/resnet10t", weights=weights)
        assert loaded.weights == "c3_in1k" and loaded.fingerprint == model_fingerprint(src)
    assert resolve_model("timm/resnet10t.c3_in1k").fingerprint == model_fingerprint(src)
    assert loaded.preprocess.crop == 176 and loaded.preprocess.mean == (0.485, 0.456, 0.406)
    _hub_flag_untouched()


def test_timm_weights_file_with_its_own_class_count(offline, tmp_path):
    timm = pytest.importorskip("timm")
    src = random_init(lambda: timm.create_model("resnet10t", pretrained=False, num_classes=365))
    path = tmp_path / "resnet10t_places.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    loaded = resolve_model("timm/resnet10t", weights=str(path))
    assert loaded.module.fc.out_features == 365 and loaded.fingerprint == model_fingerprint(src)
    assert loaded.weights == "file:resnet10t_places.pth"
    # the hub's own file format, copied by hand: a .safetensors file
    safetensors_torch = pytest.importorskip("safetensors.torch")
    hub_file = tmp_path / "model.safetensors"
    safetensors_torch.save_file(src.state_dict(), str(hub_file))
    assert resolve_model("timm/resnet10t", weights=str(hub_file)).fingerprint == model_fingerprint(src)


def test_timm_bad_inputs(offline, scope_cli, monkeypatch):
    pytest.importorskip("timm")
    assert_one_line_error(scope_cli("layers", "timm/incepton_v4", "--weights", "random"), 2, "did you mean timm/inception_v4")
    assert_one_line_error(scope_cli("layers", "timm/zzzzqqqq"), 2, "timm.list_models()")
    assert_one_line_error(scope_cli("layers", "timm/"), 2, "timm/NAME")
    assert_one_line_error(scope_cli("layers", "timm/inception_v4", "--weights", "in22k"), 2,
                          "no weights 'in22k'; choose one of: DEFAULT, tf_in1k, random, or a PATH")
    assert_one_line_error(scope_cli("layers", "timm/inception_v4.tf_in1k", "--weights", "other"), 2, "names its weights already")
    assert_one_line_error(scope_cli("layers", "timm/inception_v4.nope", "--weights", "random"), 2, "no weights 'nope'")
    assert_one_line_error(scope_cli("layers", "timm/inception_v4", "--weights", str(offline / "x.pth")), 2, "not found")
    assert_one_line_error(scope_cli("layers", "timm/hf-hub:timm/foo", "--weights", "random"), 2, "unknown timm model")
    # a bare timm name points at the family
    assert_one_line_error(scope_cli("layers", "inception_v4", "--weights", "random"), 2, "did you mean timm/inception_v4?")
    _block_import(monkeypatch, "timm")
    assert_one_line_error(scope_cli("layers", "timm/inception_v4", "--weights", "random"), 2, "pip install 'scopecli[timm]'")


# ---------------------------------------------------------------- open_clip


def test_open_clip_rn50x4_random_offline(offline):
    pytest.importorskip("open_clip")
    m = resolve_model("open_clip/RN50x4", weights="random")
    assert m.architecture == "ModifiedResNet" and m.name == "RN50x4" and m.weights == "random:0"
    p = m.preprocess
    assert (p.crop, p.resize, p.interpolation) == (288, 288, "bicubic")
    assert p.mean == (0.48145466, 0.4578275, 0.40821073) and p.std == (0.26862954, 0.26130258, 0.27577711)
    with torch.no_grad():
        out = m.module(torch.zeros(1, 3, 288, 288))
    assert out.shape == (1, 640)  # the attention pool's embedding
    import open_clip

    assert _clip_name(open_clip, "open_clip/rn50x4") == "RN50x4"
    # open_clip's own spelling rules: 'ViT-B/32' is ViT-B-32
    family, spec = family_for("open-clip/ViT-B/32")
    assert family.name == "open_clip" and spec == "open_clip/ViT-B-32"
    _hub_flag_untouched()


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_clip(monkeypatch):
    """A tiny open_clip architecture with one pretrained tag whose weights live on the hub (fast tests)."""
    open_clip = pytest.importorskip("open_clip")
    import open_clip.factory
    import open_clip.pretrained

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "scope-tiny", json.loads(json.dumps(TINY_CLIP)))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "scope-tiny", {
        "fake": {"hf_hub": "scope-tests/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                 "interpolation": "bilinear"},
    })
    return open_clip


def test_open_clip_pretrained_comes_from_the_local_cache_only(offline, tiny_clip, scope_cli):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    r = scope_cli("layers", "open_clip/scope-tiny")
    assert_one_line_error(r, 2, "not in the local Hugging Face cache")
    assert str(offline / "models--scope-tests--tiny-clip") in r.stderr and "--weights random" in r.stderr
    assert "open_clip_model.safetensors" in r.stderr
    # the Microscope model names open_clip's HF location for the openai weights
    r = scope_cli("layers", "open_clip/RN50x4", "--weights", "openai")
    assert_one_line_error(r, 2, "not in the local")
    assert str(offline / "models--timm--resnet50x4_clip.openai") in r.stderr
    _hub_flag_untouched()
    src = random_init(lambda: tiny_clip.create_model("scope-tiny"))
    with torch.no_grad():
        src.visual.proj.fill_(0.25)
    safetensors_torch.save_file({k: v.contiguous() for k, v in src.state_dict().items()},
                                str(_fake_hub_file(offline, "scope-tests/tiny-clip", "open_clip_model.safetensors")))
    loaded = resolve_model("open_clip/scope-tiny")
    assert loaded.weights == "fake" and loaded.fingerprint == model_fingerprint(src.visual)
    assert loaded.preprocess.to_dict() == {"mean": [0.5] * 3, "std": [0.25] * 3, "resize": 32, "crop": 32,
                                           "interpolation": "bilinear", **RGB_INPUT}
    _hub_flag_untouched()


def test_open_clip_weights_file_and_bad_inputs(offline, tiny_clip, tmp_path, scope_cli, monkeypatch):
    src = random_init(lambda: tiny_clip.create_model("scope-tiny"))
    with torch.no_grad():
        src.visual.proj.fill_(0.5)
    whole = tmp_path / "clip.pt"  # a whole CLIP model's state dict: scope takes its visual tower
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, whole)
    assert resolve_model("open_clip/scope-tiny", weights=str(whole)).fingerprint == model_fingerprint(src.visual)
    tower = tmp_path / "visual.pt"
    torch.save(src.visual.state_dict(), tower)
    assert resolve_model("open_clip/scope-tiny", weights=str(tower)).weights == "file:visual.pt"
    assert_one_line_error(scope_cli("layers", "open_clip/RN50x5", "--weights", "random"), 2, "did you mean open_clip/RN50x4")
    assert_one_line_error(scope_cli("layers", "open_clip/RN50x4", "--weights", "laion"), 2,
                          "no weights 'laion'; choose one of: DEFAULT, openai, random, or a PATH")
    assert_one_line_error(scope_cli("layers", "open_clip/", "--weights", "random"), 2, "open_clip/NAME")
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nope": torch.zeros(2)}, bad)
    assert_one_line_error(scope_cli("layers", "open_clip/scope-tiny", "--weights", bad), 2, "does not match the model")
    assert_one_line_error(scope_cli("layers", "rn50x4", "--weights", "random"), 2, "did you mean open_clip/RN50x4?")
    _block_import(monkeypatch, "open_clip")
    assert_one_line_error(scope_cli("layers", "open_clip/RN50x4", "--weights", "random"), 2, "pip install 'scopecli[clip]'")


# ---------------------------------------------------------------- scope models


def test_models_lists_families_extras_and_microscope_names(scope_cli):
    r = scope_cli("models", "--json")
    assert r.code == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert {"alexnet", "googlenet", "inception_v3", "vgg19", "resnet50"} <= set(rows)  # torchvision rows stay
    for name, family in (("timm/<name>", "timm"), ("timm/inception_v4", "timm"), ("timm/resnetv2_50", "timm"),
                         ("open_clip/<name>", "open_clip"), ("open_clip/RN50x4", "open_clip")):
        row = rows[name]
        assert row["family"] == family and isinstance(row["available"], bool)
        assert "random" in row["weights"] and "PATH" in row["weights"]
    assert "Microscope's InceptionV4" in rows["timm/inception_v4"]["source"]
    assert rows["alexnet"]["family"] == "torchvision" and rows["package.module:factory"]["family"] == "custom"
    table = scope_cli("models")
    assert table.code == 0 and "timm/inception_v4" in table.stdout and "open_clip/RN50x4" in table.stdout


def test_models_rows_name_the_libraries_default_tags():
    timm = pytest.importorskip("timm")
    open_clip = pytest.importorskip("open_clip")
    for _, name, tag in TIMM_MICROSCOPE:
        assert timm.models.get_pretrained_cfg(name).tag == tag
    for _, name, tag in CLIP_MICROSCOPE:
        assert open_clip.list_pretrained_tags_by_model(name)[0] == tag


def test_models_says_when_an_extra_is_missing(monkeypatch, scope_cli):
    monkeypatch.setattr(hub, "installed", lambda module: False)
    rows = {row["name"]: row for row in json.loads(scope_cli("models", "--json").stdout)}
    assert rows["timm/inception_v4"]["available"] is False
    table = scope_cli("models").stdout
    assert "[timm] extra" in " ".join(table.split()) or "[timm]" in table  # not eaten as rich markup
    assert "pip install 'scopecli[timm]'" in rows["timm/<name>"]["source"]
    assert "pip install 'scopecli[clip]'" in rows["open_clip/RN50x4"]["source"]
