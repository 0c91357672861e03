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

from scopecli.artifact.display import default_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """The model's input spec: how a stored picture becomes a model input, and what the input is.

    channels: the input channel count (3 for RGB; 1 grayscale; N for microscopy, satellite bands);
    bit_depth: 8 or 16, the depth pictures are stored at (16-bit data keeps its precision);
    value_range: raw sample values that map to 0 and 1 (None: the data type's full range);
    channel_names / display_channels: labels, and which channels a composite shows as red, green, blue.
    A stored picture q (integers 0..2^bit_depth-1) reaches the model as (q / qmax - mean) / std.
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    channels: int = 3
    bit_depth: int = 8
    value_range: tuple[float, float] | None = None
    channel_names: tuple[str, ...] = ()
    display_channels: tuple[int, ...] = ()

    @property
    def qmax(self) -> int:
        """The largest stored sample value (255 or 65535)."""
        return (1 << int(self.bit_depth)) - 1

    @property
    def is_rgb(self) -> bool:
        """8-bit 3-channel input: today's photos, stored and shown as they are."""
        return self.channels == 3 and self.bit_depth == 8

    def names(self) -> list[str]:
        """One label per channel (the given names, else R,G,B / gray / ch0..)."""
        if len(self.channel_names) == self.channels:
            return list(self.channel_names)
        return list(default_names(self.channels))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        c = len(self.mean)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        return (x - mean) / std

    def pil_transform(self):
        """PIL image -> float tensor CHW in [0,1], resized and center-cropped (not normalized)."""
        from torchvision import transforms

        mode = getattr(transforms.InterpolationMode, self.interpolation.upper())
        return transforms.Compose(
            [transforms.Resize(self.resize, interpolation=mode), transforms.CenterCrop(self.crop), transforms.ToTensor()]
        )

    def to_dict(self) -> dict:
        out = {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "resize": int(self.resize),
            "crop": int(self.crop),
            "interpolation": self.interpolation,
        }
        out.update({  # format 1.2: the input spec (absent in 1.0/1.1 files: 8-bit RGB)
            "channels": int(self.channels),
            "bit_depth": int(self.bit_depth),
            "value_range": None if self.value_range is None else [float(v) for v in self.value_range],
            "channel_names": list(self.channel_names),
            "display_channels": [int(v) for v in self.display_channels],
        })
        return out


@dataclass
class LoadedModel:
    """A resolved model in eval mode with frozen parameters, plus what artifacts record about it."""

    name: str
    spec: str
    architecture: str
    weights: str
    module: nn.Module
    preprocess: Preprocess = field(default_factory=Preprocess)
    class_names: list[str] | None = None  # output index -> class name, where the family knows (effects match labels)

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
