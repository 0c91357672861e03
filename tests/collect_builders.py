"""Builders for the collect tests: tiny models wrapped as LoadedModel, synthetic image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from scopecli.model import LoadedModel, Preprocess


def loaded(module: nn.Module, size: int, name: str = "tiny") -> LoadedModel:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    pre = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=size, crop=size)
    return LoadedModel(name=name, spec=name, architecture=type(module).__name__, weights="test", module=module,
                       preprocess=pre)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2, padding=1))


def noise_images(folder: Path, n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n random RGB PNGs named img_000.png.. (lossless, so the test can recompute exact inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = []
    for i in range(n):
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img_{i:03d}.png")
        arrays.append(a)
    return arrays


def model_input(arrays: list[np.ndarray]) -> torch.Tensor:
    """The normalized batch a size-preserving preprocess gives (resize/crop are identities here)."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def collect_single_and_packed(scope_cli, common: list, folder: Path) -> tuple[Path, Path]:
    """Run the `scope collect` arguments `common` once whole (single.h5) and as two shards packed into one
    (packed.h5), asserting each command succeeds; returns both paths, for tests that a sharded run
    reproduces the single run exactly."""
    single, packed = folder / "single.h5", folder / "packed.h5"
    r = scope_cli(*common, "-o", single)
    assert r.code == 0, r.stderr
    for k in (1, 2):
        r = scope_cli(*common, "--shard", f"{k}/2", "-o", folder / f"s{k}.h5")
        assert r.code == 0, r.stderr
    r = scope_cli("pack", folder / "s1.h5", folder / "s2.h5", "-o", packed, "--quiet")
    assert r.code == 0, r.stderr
    return single, packed


def colour_images(folder: Path, n: int = 8, size: int = 32, seed: int = 0, green: str = "green") -> Path:
    """Reddish images (class 0, "red") and greenish ones (class 1, `green`), with folder/../labels.tsv (file,
    class_index, class_name): data where tinymodels:decisive_net's unit 0 decides class 0."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = ["file\tclass_index\tclass_name"]
    for i in range(n):
        c = i % 2
        arr = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
        arr[:, :, c] = rng.integers(150, 255, (size, size)).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i:02d}.png")
        rows.append(f"im{i:02d}.png\t{c}\t{'red' if c == 0 else green}")
    (folder.parent / "labels.tsv").write_text("\n".join(rows) + "\n")
    return folder
