"""Build small synthetic scope artifacts for tests (plain functions; any engineer's tests may use them).

    from artifact_factory import make_artifact, fake_model_info
    path = make_artifact(tmp_path / "a.h5")                 # 2 layers, renders, examples, stats, probe
    path = make_artifact(tmp_path / "b.h5", renders=False)  # only collect sections

Everything is derived from `seed`, so the same arguments give the same content.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from scopecli.artifact import ArtifactWriter
from scopecli.core.records import (
    QUANTILES,
    ActivationSample,
    ExampleSet,
    ImageTable,
    LayerLayout,
    LayerRecord,
    ProbeBlock,
    RenderRecord,
    StatsBlock,
    Strongest,
    UnitSpace,
    space_record,
)

FAKE_FINGERPRINT = hashlib.sha256(b"fake model").hexdigest()


def fake_model_info(fingerprint: str = FAKE_FINGERPRINT, spec: str = "fakenet") -> dict:
    """A dict shaped like LoadedModel.info() for a model that does not exist."""
    return {
        "spec": spec, "name": spec, "architecture": "FakeNet", "weights": "random", "fingerprint": fingerprint,
        "preprocess": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": 72, "crop": 64,
                       "interpolation": "bilinear"},
        "torch_version": "0.0", "torchvision_version": "0.0",
    }


def fake_layers() -> list[LayerRecord]:
    """Two layers: a conv-like one with a '/' in its name (must be escaped) and a vector one, with layouts."""
    return [
        LayerRecord(name="features.1/conv", units=6, shape=(6, 8, 8), rf_size=11, rf_stride=8, rf_start=-4,
                    layout=LayerLayout("nchw", (0, 1, 2, 3), (8, 8))),
        LayerRecord(name="head.fc", units=4, shape=(4, 1, 1), rf_size=64, rf_stride=1, rf_start=0,
                    layout=LayerLayout("vector", (0, 1), (1, 1), field="global")),
    ]


def fake_image_table(n: int = 12, seed: int = 0, prefix: str = "img") -> ImageTable:
    rng = np.random.default_rng(seed)
    paths = [f"{prefix}/{i:04d}.jpg" for i in range(n)]
    return ImageTable(
        paths=paths, sha256=[hashlib.sha256(p.encode()).hexdigest() for p in paths],
        width=rng.integers(64, 400, n).astype(np.int32), height=rng.integers(64, 400, n).astype(np.int32),
        label=(np.arange(n) % 3).astype(np.int32), class_names=["cat", "dog", "ünïcode"],
        skipped=[(f"{prefix}/broken.jpg", "cannot identify image file")],
        source=np.where(np.arange(n) % 4 < 2, np.arange(n) // 4, -1).astype(np.int32),  # pairs from one photo
        source_names=[f"{prefix}-photo{j}" for j in range((n + 3) // 4)],
    )


def fake_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random picture (compresses like a real one, unlike white noise)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(x / (3 + c) + rng.random() * 6) * np.cos(y / (4 + c)) for c in range(3)], -1)
    return ((img + 1) * 127.5).clip(0, 255).astype(np.uint8)


def fake_renders(layer: LayerRecord, units, seed: int = 0, size: int = 32, objectives=("channel",)) -> list[RenderRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for u in units:
        for obj in objectives:
            out.append(RenderRecord(
                unit=int(u), objective=obj, diversity_index=0, image=fake_image(rng, size, size), seed=1000 + int(u),
                steps=64, size=size, param="fft", lr=0.05, act_final=float(rng.random() * 10),
                act_robust=float(rng.random() * 8), act_trace=rng.random(3).astype(np.float32), time_s=0.25,
                dataset_max_ratio=math.nan,
            ))
    return out


def fake_examples(layer: LayerRecord, units, n_images: int, k: int = 4, seed: int = 0, largest: bool = True,
                  patch: int = 16, image_indices=None) -> ExampleSet:
    """Top (largest=True) or bottom examples; the last unit misses its last example (index -1)."""
    rng = np.random.default_rng(seed)
    units = np.asarray(list(units), np.int64)
    u = len(units)
    pool = np.arange(n_images) if image_indices is None else np.asarray(image_indices)
    score = np.sort(rng.normal(size=(u, k)).astype(np.float32), axis=1)
    if largest:
        score = score[:, ::-1].copy()
    ii = np.stack([rng.choice(pool, size=k, replace=len(pool) < k) for _ in range(u)]).astype(np.int64)
    loc = rng.integers(0, max(layer.shape[1], 1), (u, k, 2)).astype(np.int32)
    box = np.concatenate([loc[..., ::-1] * 8 - 4, loc[..., ::-1] * 8 + 7], -1).astype(np.int32)
    patches = [[fake_image(rng, patch, patch) for _ in range(k)] for _ in range(u)]
    shown = np.clip(box, 0, 64).astype(np.int32)
    heat = rng.normal(size=(u, k, 3, 3)).astype(np.float32)
    origin = np.clip(loc - 1, 0, max(layer.shape[1] - 3, 0)).astype(np.int32)
    if u:
        ii[-1, -1], score[-1, -1], patches[-1][-1] = -1, np.nan, None
        heat[-1, -1] = np.nan
    return ExampleSet(units=units, score=score, image_index=ii, loc=loc, box=box, patches=patches, shown=shown,
                      heat=heat, heat_origin=origin)


def fake_strongest(layer: LayerRecord, units, n_images: int, k: int = 2, seed: int = 0) -> Strongest:
    """Each unit's top images (a collect with labels writes them for label profiles)."""
    rng = np.random.default_rng(seed)
    units = np.asarray(list(units), np.int64)
    score = -np.sort(-rng.normal(size=(len(units), k)).astype(np.float32), axis=1)
    ii = np.stack([rng.choice(n_images, size=k, replace=n_images < k) for _ in units]).astype(np.int64) \
        if len(units) else np.zeros((0, k), np.int64)
    return Strongest(units, score, ii, 0.01)


def fake_inputs(layer: LayerRecord, units, source: LayerRecord, k: int = 3):
    """Strongest inputs of `units` from `source` (a circuits run writes them). Derived from the unit alone, so
    shards of one model agree; the last unit never fires (no rows)."""
    from scopecli.core.records import InputsBlock

    units = np.asarray(list(units), np.int64)
    table = np.full((len(units), source.units), np.nan)
    for i, u in enumerate(units):
        if u != layer.units - 1:
            table[i] = np.random.default_rng(int(u)).normal(size=source.units)
    examples = [0 if u == layer.units - 1 else 4 for u in units]
    return InputsBlock.from_table(units, source.name, table, examples, k)


def fake_caricatures(layer: LayerRecord, n: int = 2, size: int = 24):
    """Caricatures of n fake photos (`scope caricature` writes them); derived from the layer name alone."""
    from scopecli.core.records import Caricature

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        photo = fake_image(rng, size, size)
        out.append(Caricature(hashlib.sha256(f"photo {i}".encode()).hexdigest(), f"photo_{i}.jpg",
                              fake_image(np.random.default_rng([i, len(layer.name)]), size, size), photo,
                              0.9 - 0.1 * i, 1.5 + i, 64, size, 1000 + i, 0.05, 1.0, "fft", 0.2))
    return out
def fake_sample(layer: LayerRecord, n_images: int, n: int = 5, seed: int = 0) -> ActivationSample:
    """An activation sample of n position vectors (a collect with --sample writes one per layer)."""
    rng = np.random.default_rng(seed)
    gh, gw = layer.shape[1:]
    return ActivationSample(keys=np.sort(rng.integers(0, 1 << 62, n, dtype=np.int64)).astype(np.uint64),
                            vectors16=rng.normal(size=(n, layer.units)).astype(np.float16),
                            image_index=rng.integers(0, n_images, n).astype(np.int64),
                            positions=np.stack([rng.integers(0, gh, n), rng.integers(0, gw, n)], 1).astype(np.int32),
                            seed=seed, size=n, population=n_images * gh * gw)


def fake_atlas(layer: LayerRecord, grid: int = 3, size: int = 16):
    """A small activation atlas (`scope atlas` writes it): the cells of the diagonal and one more."""
    from scopecli.core.records import AtlasBlock

    rng = np.random.default_rng(len(layer.name))
    cell = np.array([[i, i] for i in range(grid)] + [[0, grid - 1]], np.int32)
    a = len(cell)
    return AtlasBlock(grid=grid, layout="pca", layout_note="umap-learn is not installed: PCA layout", seed=0,
                      vectors=10 * a, steps=8, size=size, power=1.0, param="fft", lr=0.05, cell=cell,
                      count=np.full(a, 10, np.int32), center=((cell + 0.5) / grid).astype(np.float32),
                      mean=rng.normal(size=(a, layer.units)).astype(np.float32), act_start=np.zeros(a),
                      act_final=np.ones(a), images=[fake_image(rng, size, size) for _ in range(a)])


def fake_stats(layer: LayerRecord, units, seed: int = 0, bins: int = 8) -> StatsBlock:
    rng = np.random.default_rng(seed)
    units = np.asarray(list(units), np.int64)
    n = len(units)
    mean = rng.normal(size=n)
    return StatsBlock(
        units=units, count=np.full(n, 100, np.int64), mean=mean, std=rng.random(n) + 0.1, min=mean - 3,
        max=mean + 3, frac_pos=rng.random(n), quantiles=np.sort(rng.normal(size=(n, len(QUANTILES))), axis=1),
        sketch={"hist": rng.integers(0, 50, (n, bins)).astype(np.int64), "sum": rng.normal(size=n)},
        sketch_attrs={"bins": bins, "kind": "fixed"},
    )


def fake_probe(layer: LayerRecord, image_indices, seed: int = 0) -> ProbeBlock:
    rng = np.random.default_rng(seed)
    ii = np.asarray(list(image_indices), np.int64)
    return ProbeBlock(image_index=ii, acts=rng.normal(size=(len(ii), layer.units)).astype(np.float16))


def fake_space(base: LayerRecord, name: str = "pca3", k: int = 3, seed: int = 0) -> UnitSpace:
    """A unit space of k directions on layer `base` (what `scope decompose` writes)."""
    rng = np.random.default_rng(seed)
    enc = rng.normal(size=(k, base.units)).astype(np.float32)
    return UnitSpace(base.name, name, enc, rng.normal(size=base.units).astype(np.float32), np.zeros(k, np.float32),
                     enc.copy(), "relu", 0, "pca", seed, "ab" * 32,
                     {"r2": 0.5, "explained_variance": 0.6, "dead_fraction": 0.0, "fit_seconds": 0.1},
                     {"k": k}, "a test space")


def fake_effects(layer: LayerRecord, seed: int = 0, classes=(0, 1)):
    """Effects of every unit on a few classes, with an ablation check of each (`scopecli.views.effects` writes it)."""
    from scopecli.artifact.elements.effects import Ablation, EffectsBlock

    rng = np.random.default_rng(seed)
    k, n, draws = len(classes), layer.units, 3
    block = EffectsBlock(np.asarray(classes, np.int64), [f"class{c}" for c in classes], np.full(k, 3, np.int64),
                         rng.normal(size=(k, n)), "label")
    top = block.class_tables()[0][:, :2]
    block.ablation = Ablation(np.arange(k, dtype=np.int32), top, rng.random(k).astype(np.float32),
                              rng.random(k).astype(np.float32), rng.random((k, draws)).astype(np.float32),
                              np.ones(k, np.float32), np.zeros(k, np.float32), rng.random((k, draws)).astype(np.float32),
                              k=2, seed=seed, min_images=3)
    return block


def fake_faithfulness(layer: LayerRecord, units, earlier, seed: int = 0):
    """Path-similarity evidence of the `channel` renders of `units` (`scopecli.views.faithfulness` writes it);
    `earlier`: the layer names compared (the earlier layers and this one)."""
    from scopecli.artifact.elements.faithfulness import FaithfulnessBlock, PathEvidence

    rng = np.random.default_rng(seed)
    rows = []
    for u in units:
        per = {n: float(rng.uniform(-1, 1)) for n in earlier}
        sim, base = float(np.mean(list(per.values()))), float(rng.uniform(-1, 1))
        rows.append(PathEvidence(int(u), "channel", 0, sim, base, (int(u) + 1) % layer.units, sim <= base, per, ""))
    return FaithfulnessBlock.from_rows(rows, k=4, seed=seed, layer_names=list(earlier))


def make_artifact(path, *, seed: int = 0, renders: bool = True, collect: bool = True, n_images: int = 12,
                  k: int = 4, units=None, fingerprint: str = FAKE_FINGERPRINT, table: ImageTable | None = None,
                  patch_format: str = "jpeg", command: str = "test", space: bool = False, pixels: bool = False) -> str:
    """Write a complete small artifact to `path` and return it as str.

    `units` (default: all) limits which units of each layer get renders/examples/stats; the probe covers
    the first 3 images. `table` overrides the synthetic image table (e.g. for pack shard tests). `space`
    adds a unit space on the first layer (layer `<first>@pca3`, with renders and collected content too).
    `pixels` gives the image table pixel statistics (format 1.2).
    """
    layers = fake_layers()
    if space:
        sp = fake_space(layers[0], seed=seed)
        layers.append(space_record(layers[0], sp.layer, sp.k))
    table = table if table is not None else fake_image_table(n_images, seed)
    if pixels:
        rng = np.random.default_rng(seed)
        a = rng.random((3, 3))
        table.pixel_mean, table.pixel_cov = rng.random(3), a @ a.T / 10
    with ArtifactWriter(path, fake_model_info(fingerprint), command, {"seed": seed, "k": k}) as w:
        for li, rec in enumerate(layers):
            w.ensure_layer(rec)
            us = list(range(rec.units)) if units is None else [u for u in units if u < rec.units]
            if renders:
                w.put_renders(rec.name, fake_renders(rec, us, seed + li))
                if us and "@" not in rec.name:
                    w.put(rec.name, "faithfulness", fake_faithfulness(rec, us, [lay.name for lay in layers[: li + 1]],
                                                                      seed + li))
                if li == 1:
                    w.put(rec.name, "caricatures", fake_caricatures(rec))
                    w.put(rec.name, "atlas", fake_atlas(rec))
            if collect:
                w.set_dataset(table)
                n = len(table)
                w.put_examples(rec.name, "top", fake_examples(rec, us, n, k, seed + li, True), patch_format)
                w.put_examples(rec.name, "bottom", fake_examples(rec, us, n, k, seed + li + 50, False), patch_format)
                w.put_stats(rec.name, fake_stats(rec, us, seed + li))
                w.put_probe(rec.name, fake_probe(rec, range(min(3, n)), seed + li))
                w.put(rec.name, "strongest", fake_strongest(rec, us, n, 2, seed + li))
                if li > 0 and us:
                    w.put(rec.name, "inputs", fake_inputs(rec, us, layers[li - 1]))
                w.put(rec.name, "sample", fake_sample(rec, n, 5, seed + li))
                if "@" not in rec.name:
                    w.put(rec.name, "effects", fake_effects(rec, seed + li))
        if space:
            w.put(sp.layer, "space", sp)
        w.add_timing("total", 0.5)
    return str(path)
