"""Collect's activation sample: a seeded uniform sample of N position vectors per layer, kept while pass 1 runs.

Why: unit spaces (PCA, NMF, sparse autoencoders) are fitted on activation vectors, and the artifact should
let anyone fit one later without the images. Keeping every vector is out of the question; a reservoir would
depend on the order images arrive in, so shards could not merge. Instead every (image, position) gets a
key from (seed, image path, position) alone (`scopecli.core.sketch.position_keys`) and the sample is the N
smallest keys: the same whatever the batching, the sharding or a resume, and `scope pack` merges shards
exactly by taking the N smallest keys of their union.
"""

from __future__ import annotations

import numpy as np
import torch

from scopecli.core.records import ActivationSample
from scopecli.core.sketch import position_keys, smallest_keys


class StreamingSample:
    """The N smallest-key position vectors of one layer seen so far (float16, on the CPU)."""

    def __init__(self, channels: int, size: int, seed: int):
        self.channels = int(channels)
        self.size = int(size)
        self.seed = int(seed)
        self.keys = np.zeros(0, np.uint64)
        self.image = np.zeros(0, np.int64)  # candidate index of the image (remapped to table rows at the end)
        self.pos = np.zeros(0, np.int64)  # flat grid position
        self.vectors = np.zeros((0, self.channels), np.float16)
        self.population = 0

    def observe(self, a: torch.Tensor, image: np.ndarray, paths: list[str]) -> None:
        """a [B, C, P] activations of B images (candidate indices `image`, table paths `paths`)."""
        b, c, p = a.shape
        if self.size == 0 or b == 0:
            return
        keys = np.concatenate([position_keys(self.seed, path, p) for path in paths])
        imgs = np.repeat(np.asarray(image, np.int64), p)
        pos = np.tile(np.arange(p, dtype=np.int64), b)
        self.population += b * p
        cand = np.arange(len(keys)) if len(self.keys) < self.size else np.flatnonzero(keys <= self.keys[-1])
        if len(cand) == 0:
            return
        if len(cand) > self.size:  # only the batch's own best can enter: gather just those vectors
            cand = cand[smallest_keys(keys[cand], imgs[cand], pos[cand], self.size)]
        rows = torch.from_numpy(cand // p).to(a.device)
        cols = torch.from_numpy(cand % p).to(a.device)
        vec = a[rows, :, cols].to("cpu", torch.float16).numpy()
        k = np.concatenate([self.keys, keys[cand]])
        im = np.concatenate([self.image, imgs[cand]])
        ps = np.concatenate([self.pos, pos[cand]])
        vs = np.concatenate([self.vectors, vec])
        keep = smallest_keys(k, im, ps, self.size)
        self.keys, self.image, self.pos, self.vectors = k[keep], im[keep], ps[keep], vs[keep]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The kept rows as plain arrays (what a resumed collect needs to go on exactly)."""
        return {"keys": self.keys, "image": self.image, "pos": self.pos, "vectors": self.vectors,
                "population": np.array([self.population], np.int64)}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from `state_arrays()` of a sample of the same units and size; ValueError otherwise."""
        if set(arrays) != {"keys", "image", "pos", "vectors", "population"}:
            raise ValueError(f"sample state holds {sorted(arrays)}")
        n = len(arrays["keys"])
        if n > self.size or arrays["vectors"].shape != (n, self.channels) or arrays["image"].shape != (n,) \
                or arrays["pos"].shape != (n,) or arrays["keys"].dtype != np.uint64:
            raise ValueError(f"sample state of {n} rows does not fit {self.channels} units, size {self.size}")
        self.keys = np.array(arrays["keys"], np.uint64)
        self.image = np.array(arrays["image"], np.int64)
        self.pos = np.array(arrays["pos"], np.int64)
        self.vectors = np.array(arrays["vectors"], np.float16)
        self.population = int(np.asarray(arrays["population"]).reshape(-1)[0])

    def result(self, width: int, remap: np.ndarray) -> ActivationSample:
        """The sample with image indices as rows of the image table (`remap`: candidate index -> row)."""
        width = max(int(width), 1)
        positions = np.stack([self.pos // width, self.pos % width], 1).astype(np.int32).reshape(-1, 2)
        return ActivationSample(keys=self.keys.copy(), vectors16=self.vectors.copy(), image_index=remap[self.image],
                                positions=positions, seed=self.seed, size=self.size, population=self.population)
