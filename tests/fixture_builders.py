"""A format-1.1 artifact holding every per-layer element, written through the real commands on a tiny
model (scripts/make_fixture.py --version 1.1 freezes one as tests/fixtures/artifact-1.1.h5).

Why through the commands: the frozen file must be what a user's scope wrote, not what a test factory
imagines the writer writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collect_builders import noise_images

LAYERS = "1,3"  # tinymodels:tiny_cnn's first and last ReLU (8 and 8 channels)
BASE = ["--input-size", 32, "--quiet"]
COLLECT = ["--top-k", 3, "--bottom-k", 1, "--batch", 6, "--workers", 0, "--probe", 4, "--patch-size", 16,
           "--sample", 64, "--circuits", "prev", "--seed", 0]


def noise_stacks(folder: Path, n: int, size: int, channels: int = 5, seed: int = 0) -> None:
    """n random uint16 C x H x W arrays named img_000.npy.. (16-bit multi-channel data, like microscopy)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(folder / f"img_{i:03d}.npy", rng.integers(0, 65536, (channels, size, size)).astype(np.uint16))


# The 1.2 fixture's model: 5 channels at 16 bits, named, with a false-colour mapping (later commands take the
# file's recorded input spec)
FIVE = dict(model="tinymodels:five_channel", make_data=lambda d: noise_stacks(d, 12, 32, seed=12), ext=".npy",
            inputs=["--bit-depth", 16, "--channel-names", "DAPI,GFP,RFP,Cy5,BF", "--display-channels", "2,1,0",
                    "--channel-axis", 0], layers="2,4", last="4")


def write_full_artifact(folder: Path, run, model: str = "tinymodels:tiny_cnn", make_data=None, ext: str = ".png",
                        inputs=(), layers: str = LAYERS, last: str = "3", effects: bool = False) -> Path:
    """Build the data and every element into folder/full.h5; run(*args) runs `scope ARGS` and returns its
    exit code. Elements: layout, renders, examples (+ heatmaps, shown windows, groups), strongest, stats,
    probe, sample, inputs, space (PCA), caricatures, atlas. `model`, `make_data(folder)`, `ext` (the data files'
    suffix) and `inputs` (collect's input-spec options) choose another model (FIVE: 5 channels, 16 bits).
    `effects` (format 1.3) adds the effects with their ablation check and the renders' path similarity."""
    data = folder / "data"
    (make_data or (lambda d: noise_images(d, 12, 32, seed=11)))(data)
    names = sorted(p.name for p in data.glob("*" + ext))
    labels = folder / "labels.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"{n}\t{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    groups = folder / "groups.tsv"
    groups.write_text("".join(f"{n}\tg{i // 2}\n" for i, n in enumerate(names)))
    out = folder / "full.h5"
    steps = [
        ("collect", model, "--data", data, "--labels", labels, "--groups", groups, "--layer", layers, "-o", out,
         *COLLECT, *BASE, *inputs),
        ("render", model, "--layer", last, "--units", "0:2", "--steps", 8, "--size", 32, "--seed", 0, "-o", out,
         *BASE),
        ("decompose", out, "--layer", last, "--method", "pca", "--k", 4, "--data", data, "--labels", labels, "--groups",
         groups, "--quiet"),
        ("render", model, "--layer", f"{last}@pca4", "--units", "0", "--objective", "direction", "--steps", 8,
         "--size", 32, "-o", out, *BASE),
        ("caricature", model, "--image", data / names[0], "--layer", last, "--steps", 8, "-o", out, *BASE),
        ("atlas", out, "--layer", last, "--grid", 2, "--steps", 8, "--size", 32, "--layout", "pca", "--quiet"),
    ]
    if effects:
        steps += [("effects", out, "--data", data, "--ablate-k", 2, "--draws", 2, "--min-images", 2, "--quiet"),
                  ("faithfulness", out, "--data", data, "--k", 2, "--quiet")]
    for args in steps:
        code = run(*args)
        if code != 0:
            raise RuntimeError(f"scope {args[0]} failed ({code}) while building the fixture")
    return out
