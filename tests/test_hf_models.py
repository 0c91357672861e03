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
from tests.collect_builders import noise_images  # noqa: E402
from tests.conftest import assert_one_line_error  # noqa: E402
from tests.test_layers import analytic_field, measured_field  # noqa: E402

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
                max_position_embeddings=16, projection_dim=16)
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
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)
