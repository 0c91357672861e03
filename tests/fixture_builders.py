"""A format-1.1 artifact holding every per-layer element, written through the real commands on a tiny
model (scripts/make_fixture.py --version 1.1 freezes one as tests/fixtures/artifact-1.1.h5).

Why through the commands: the frozen file must be what a user's scope wrote, not what a test factory
imagines the writer writes."""

from __future__ import annotations

from pathlib import Path

from collect_builders import noise_images

LAYERS = "1,3"  # tinymodels:tiny_cnn's first and last ReLU (8 and 8 channels)
BASE = ["--input-size", 32, "--quiet"]
COLLECT = ["--top-k", 3, "--bottom-k", 1, "--batch", 6, "--workers", 0, "--probe", 4, "--patch-size", 16,
           "--sample", 64, "--circuits", "prev", "--seed", 0]


def write_full_artifact(folder: Path, run) -> Path:
    """Build the data and every element into folder/full.h5; run(*args) runs `scope ARGS` and returns its
    exit code. Elements: layout, renders, examples (+ heatmaps, shown windows, groups), strongest, stats,
    probe, sample, inputs, space (PCA), caricatures, atlas."""
    data = folder / "data"
    noise_images(data, 12, 32, seed=11)
    names = sorted(p.name for p in data.glob("*.png"))
    labels = folder / "labels.tsv"
    labels.write_text("file\tlabel\n" + "".join(f"{n}\t{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    groups = folder / "groups.tsv"
    groups.write_text("".join(f"{n}\tg{i // 2}\n" for i, n in enumerate(names)))
    out = folder / "full.h5"
    model = "tinymodels:tiny_cnn"
    steps = [
        ("collect", model, "--data", data, "--labels", labels, "--groups", groups, "--layer", LAYERS, "-o", out,
         *COLLECT, *BASE),
        ("render", model, "--layer", "3", "--units", "0:2", "--steps", 8, "--size", 32, "--seed", 0, "-o", out,
         *BASE),
        ("decompose", out, "--layer", "3", "--method", "pca", "--k", 4, "--data", data, "--labels", labels, "--groups",
         groups, "--quiet"),
        ("render", model, "--layer", "3@pca4", "--units", "0", "--objective", "direction", "--steps", 8,
         "--size", 32, "-o", out, *BASE),
        ("caricature", model, "--image", data / names[0], "--layer", "3", "--steps", 8, "-o", out, *BASE),
        ("atlas", out, "--layer", "3", "--grid", 2, "--steps", 8, "--size", 32, "--layout", "pca", "--quiet"),
    ]
    for args in steps:
        code = run(*args)
        if code != 0:
            raise RuntimeError(f"scope {args[0]} failed ({code}) while building the fixture")
    return out
