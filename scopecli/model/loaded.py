"""What every command gets back from the resolver: the module, its preprocessing, and its fingerprint.

Kept apart from the families so that code which only consumes a model (render, collect, tests that
build a LoadedModel by hand) does not import torchvision's catalogue or any family's loader.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
