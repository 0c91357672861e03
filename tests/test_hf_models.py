"""`hf/ORG/NAME`: Hugging Face transformers vision models from the local hub cache only (never the network).

Tiny configs (hidden size 32, 2 layers, 32-pixel images, 8-pixel patches) are saved with `save_pretrained`
into a temporary folder laid out as the hub cache (models--ORG--NAME/snapshots/COMMIT, refs/main).
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")

from scopecli.model import model_fingerprint, resolve_model  # noqa: E402
from scopecli.model.layers import layer_table  # noqa: E402
from scopecli.model.weights import random_init  # noqa: E402
from collect_builders import noise_images  # noqa: E402
from conftest import assert_one_line_error  # noqa: E402
from test_layers import analytic_field, measured_field  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
HALF = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def _vit():
    cfg = transformers.ViTConfig(**TINY, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fish"},
                                 label2id={"cat": 0, "dog": 1, "fish": 2})
    return transformers.ViTForImageClassification(cfg), {
        "image_processor_type": "ViTImageProcessor", **HALF, "size": {"height": 32, "width": 32}, "resample": 2}


def _dinov2():
    if hasattr(transformers, "Dinov2WithRegistersModel"):
        cfg = transformers.Dinov2WithRegistersConfig(**TINY, num_register_tokens=2)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**TINY))
    return model, {**HALF, "size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32},
                   "do_center_crop": True, "resample": 3}


def _swin():
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                  window_size=4)
    return transformers.SwinModel(cfg), None  # no preprocessor config: ImageNet defaults


def _convnext():
    cfg = transformers.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], image_size=32, patch_size=4,
                                      num_stages=2)
    return transformers.ConvNextModel(cfg), {**HALF, "size": {"shortest_edge": 32}, "crop_pct": 0.875,
                                             "resample": 3}


def _clip():
    vision = dict(TINY, projection_dim=16)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                max_position_embeddings=16, projection_dim=16, eos_token_id=2, bos_token_id=1,
                pad_token_id=0)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return transformers.CLIPModel(cfg), {**HALF, "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
                                         "do_center_crop": True, "resample": 3}


MODELS = {"vit": _vit, "dinov2": _dinov2, "swin": _swin, "convnext": _convnext, "clip": _clip}


@pytest.fixture
def hf_cache(monkeypatch, tmp_path):
    """An empty hub cache of our own, with the network off."""
    import socket

    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError("test: the network is off")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def save_to_cache(cache, repo: str, kind: str, weights: bool = True) -> torch.nn.Module:
    """Save a tiny `kind` model as the hub would cache repo; returns the saved model."""
    model, pp = random_init(MODELS[kind])
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    model.save_pretrained(str(snapshot))
    if not weights:
        for f in snapshot.glob("*.safetensors"):
            f.unlink()
    if pp is not None:
        (snapshot / "preprocessor_config.json").write_text(json.dumps(pp))
    return model.eval()


def _layers(scope_cli, spec, *extra):
    r = scope_cli("layers", spec, "--json", *extra)
    assert r.code == 0 and not r.stderr.strip(), r.stderr  # no progress bars or library warnings
    return json.loads(r.stdout)


def _tower(src) -> torch.nn.Module:
    """The vision tower of a saved CLIPModel, as transformers' CLIPVisionModel holds it."""
    tower = transformers.CLIPVisionModel(src.config.vision_config)
    own = set(tower.state_dict())
    state = {k.split(".", 1)[1] if k.split(".", 1)[1] in own else k: v for k, v in src.state_dict().items()
             if k.startswith("vision_model.")}
    tower.load_state_dict(state)
    return tower


@pytest.mark.parametrize("kind", list(MODELS))
def test_cached_checkpoints_resolve_offline_with_their_blocks(hf_cache, scope_cli, kind):
    src = save_to_cache(hf_cache, f"org/tiny-{kind}", kind)
    loaded = resolve_model(f"hf/org/tiny-{kind}")
    expected = _tower(src) if kind == "clip" else src
    assert loaded.fingerprint == model_fingerprint(expected) and loaded.weights == "DEFAULT"
    x = torch.randn(2, 3, 32, 32)
    out = loaded.module(x)
    assert isinstance(out, torch.Tensor) and out.shape[0] == 2
    data = _layers(scope_cli, f"hf/org/tiny-{kind}")
    assert data["model"]["fingerprint"] == loaded.fingerprint
    rows = {row["name"]: row for row in data["layers"]}
    defaults = [row["name"] for row in data["layers"] if row["default"]]
    blocks = {"vit": "vit.layers.", "dinov2": "encoder.layer.", "swin": "encoder.layers.",
              "convnext": "encoder.stages.", "clip": "encoder.layers."}[kind]
    assert [n for n in defaults if n.startswith(blocks) and n.count(".") == blocks.count(".")] == \
        [f"{blocks}0", f"{blocks}1"], defaults
    if kind in ("vit", "dinov2", "clip"):
        lay = rows[f"{blocks}1"]["layout"]
        prefix = 1 + (2 if hasattr(transformers, "Dinov2WithRegistersModel") and kind == "dinov2" else 0)
        assert lay["kind"] == "tokens" and lay["grid"] == [4, 4] and lay["prefix_tokens"] == prefix
    if kind == "vit":
        assert loaded.class_names == ["cat", "dog", "fish"] and out.shape == (2, 3)
        assert loaded.architecture == "ViTForImageClassification"
        assert (loaded.preprocess.mean, loaded.preprocess.crop, loaded.preprocess.resize) == ((0.5,) * 3, 32, 32)
    else:
        assert loaded.class_names is None
    if kind == "convnext":  # shortest edge / crop_pct, bicubic
        assert (loaded.preprocess.crop, loaded.preprocess.resize, loaded.preprocess.interpolation) == (32, 36, "bicubic")
    if kind == "swin":  # no preprocessor config: ImageNet defaults at the config's image size
        assert loaded.preprocess.crop == 32 and loaded.preprocess.mean == (0.485, 0.456, 0.406)


def test_convnext_stage_fields_match_gradients(hf_cache):
    save_to_cache(hf_cache, "org/tiny-convnext", "convnext")
    loaded = resolve_model("hf/org/tiny-convnext")
    table = {i.name: i for i in layer_table(loaded.module, 32)}
    for name in ("embeddings", "encoder.stages.0", "encoder.stages.1"):
        info = table[name]
        assert info.layout.kind == "grid" or info.layout.kind == "nchw" or info.layout.field == "local"
        box, (cy, cx) = measured_field(loaded.module, name, 32)
        assert box == analytic_field(info, cy, cx, 32), name


def test_render_collect_validate(hf_cache, scope_cli, tmp_path):
    save_to_cache(hf_cache, "org/tiny-vit", "vit")
    spec = ["hf/org/tiny-vit"]
    out = tmp_path / "vit.h5"
    data = tmp_path / "data"
    noise_images(data, 6, 32)
    r = scope_cli("collect", *spec, "--data", data, "--layer", "vit.layers.1", "--top-k", 2, "--bottom-k", 1,
                  "--probe", 2, "--patch-size", 16, "--workers", 0, "--quiet", "-o", out)
    assert r.code == 0, r.stderr
    r = scope_cli("render", *spec, "--layer", "vit.layers.1", "--units", "0,1", "--steps", 4, "--size", 32,
                  "--batch", 2, "--device", "cpu", "--quiet", "-o", out)
    assert r.code == 0, r.stderr
    r = scope_cli("validate", out)
    assert r.code == 0, r.stderr + r.stdout


def test_random_weights_path_and_one_line_errors(hf_cache, scope_cli, tmp_path):
    src = save_to_cache(hf_cache, "org/tiny-clip", "clip", weights=False)
    # config only: random weights build from it; DEFAULT names the snapshot folder that lacks the weights
    a, b = resolve_model("hf/org/tiny-clip", weights="random"), resolve_model("hf/org/tiny-clip", weights="random")
    assert a.fingerprint == b.fingerprint and a.weights.startswith("random")
    r = scope_cli("layers", "hf/org/tiny-clip")
    assert_one_line_error(r, 2, "models--org--tiny-clip")
    # a whole CLIP state dict as --weights PATH: its vision tower
    path = tmp_path / "clip.pth"
    torch.save(src.state_dict(), path)
    assert resolve_model("hf/org/tiny-clip", weights=str(path)).fingerprint == model_fingerprint(_tower(src))
    # nothing cached: one line naming the folder the hub cache would hold
    r = scope_cli("layers", "hf/google/vit-base-patch16-224")
    assert_one_line_error(r, 2, str(hf_cache / "models--google--vit-base-patch16-224"))
    assert_one_line_error(scope_cli("layers", "hf/google/vit-base-patch16-224", "--weights", "random"), 2,
                          "models--google--vit-base-patch16-224")
    assert_one_line_error(scope_cli("layers", "hf/vit-base"), 2, "hf/ORG/NAME")
    assert_one_line_error(scope_cli("layers", "hf/"), 2, "hf/ORG/NAME")
    assert_one_line_error(scope_cli("layers", "hf/a/b/c"), 2, "hf/ORG/NAME")
    assert_one_line_error(scope_cli("layers", "hf/org/tiny-clip", "--weights", "v2"), 2, "--weights DEFAULT")


def test_models_lists_the_cache(hf_cache, scope_cli):
    save_to_cache(hf_cache, "org/tiny-vit", "vit")
    r = scope_cli("models", "--json")
    assert r.code == 0, r.stderr
    assert "hf/org/tiny-vit" in r.stdout and "hf/<name>" in r.stdout
