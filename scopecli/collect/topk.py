"""Streaming top-k / bottom-k of per-image spatial extremes, on the device, one small sort per batch.

Why: only K winners per unit survive, so memory is O(units * K) whatever the dataset size. The order is
a total order (score, then lower image index first) so results do not depend on batching or sharding.
"""

from __future__ import annotations

import numpy as np
import torch


class StreamingExtremes:
    """Keeps, per unit, the K largest (or smallest) per-image scores with image index and grid position.

    Images must arrive in increasing image-index order (the engine guarantees it): then a stable sort
    of [kept, new] breaks score ties in favour of the lower image index.
    """

    def __init__(self, channels: int, k: int, largest: bool, device: torch.device):
        self.k = int(k)
        self.largest = largest
        self.score = torch.empty(channels, 0, dtype=torch.float32, device=device)
        self.image = torch.empty(channels, 0, dtype=torch.int64, device=device)
        self.pos = torch.empty(channels, 0, dtype=torch.int64, device=device)

    def update(self, score: torch.Tensor, pos: torch.Tensor, image: torch.Tensor) -> None:
        """score, pos: [N, C] per-image extreme and its flat spatial index; image: [N] int64 indices."""
        if self.k == 0 or score.shape[0] == 0:
            return
        c = score.shape[1]
        s = torch.cat([self.score, score.t().float()], dim=1)
        im = torch.cat([self.image, image.view(1, -1).expand(c, -1)], dim=1)
        p = torch.cat([self.pos, pos.t().long()], dim=1)
        fill = float("-inf") if self.largest else float("inf")
        key = torch.nan_to_num(s, nan=fill)
        order = torch.sort(key, dim=1, descending=self.largest, stable=True).indices[:, : self.k]
        self.score = torch.gather(s, 1, order)
        self.image = torch.gather(im, 1, order)
        self.pos = torch.gather(p, 1, order)

    def update_located(self, score: torch.Tensor, image: torch.Tensor, values: torch.Tensor) -> None:
        """Like `update`, but the spatial position is found only for the new winners: score [N, C] per-image
        extremes of values [N, C, P]; the position is the first arg-max (arg-min), as `Tensor.max(dim)` gives.
        Most (image, unit) pairs never enter the top K, so this skips an arg-reduction over the whole batch."""
        new = self.start(score.shape[0])
        if new is not None:
            self.merge_units(new, 0, score.shape[1], score, image, values)
            self.commit(new)

    def start(self, n: int):
        """New state for a batch of n images, filled unit range by unit range (merge_units), then commit."""
        if self.k == 0 or n == 0:
            return None
        c, old = self.score.shape
        kn = min(self.k, old + n)
        dev = self.score.device
        return (torch.empty(c, kn, dtype=torch.float32, device=dev), torch.empty(c, kn, dtype=torch.int64, device=dev),
                torch.empty(c, kn, dtype=torch.int64, device=dev))

    def merge_units(self, new, lo: int, hi: int, score: torch.Tensor, image: torch.Tensor,
                    values: torch.Tensor) -> None:
        """Units lo:hi of a batch into `new`: score [N, hi - lo], image [N], values [N, hi - lo, P]."""
        if new is None or hi <= lo:
            return
        new_score, new_image, new_pos = new
        old = self.score.shape[1]
        c = hi - lo
        s = torch.cat([self.score[lo:hi], score.t().float()], dim=1)
        im = torch.cat([self.image[lo:hi], image.view(1, -1).expand(c, -1)], dim=1)
        fill = float("-inf") if self.largest else float("inf")
        key = torch.nan_to_num(s, nan=fill)
        order = torch.sort(key, dim=1, descending=self.largest, stable=True).indices[:, : new_score.shape[1]]
        torch.gather(s, 1, order, out=new_score[lo:hi])
        torch.gather(im, 1, order, out=new_image[lo:hi])
        pos = new_pos[lo:hi]
        if values.device.type != "cpu":  # accelerators: a full arg-reduction beats a host sync (nonzero)
            arg = (values.argmax(2) if self.largest else values.argmin(2)).t().long()
            torch.gather(torch.cat([self.pos[lo:hi], arg], dim=1), 1, order, out=pos)
            return
        if old:
            torch.gather(self.pos[lo:hi], 1, order.clamp(max=old - 1), out=pos)
        unit, col = torch.nonzero(order >= old, as_tuple=True)
        if unit.numel():
            rows = values[order[unit, col] - old, unit]
            pos[unit, col] = (rows.argmax(1) if self.largest else rows.argmin(1)).long()

    def commit(self, new) -> None:
        """Make the state filled by merge_units current."""
        if new is not None:
            self.score, self.image, self.pos = new

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The kept winners as plain arrays (what a resumed collect needs to go on exactly)."""
        return {"score": self.score.cpu().numpy(), "image": self.image.cpu().numpy(), "pos": self.pos.cpu().numpy()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from `state_arrays()` of a tracker with the same units and K; ValueError otherwise."""
        if set(arrays) != {"score", "image", "pos"}:
            raise ValueError(f"StreamingExtremes state holds {sorted(arrays)}")
        channels = self.score.shape[0]
        shape = tuple(arrays["score"].shape)
        if len(shape) != 2 or shape[0] != channels or shape[1] > self.k or any(
                tuple(arrays[name].shape) != shape for name in ("image", "pos")):
            raise ValueError(f"StreamingExtremes state of shape {shape} does not fit {channels} units, k={self.k}")
        device = self.score.device
        self.score = torch.from_numpy(np.array(arrays["score"])).to(device=device, dtype=torch.float32)
        self.image = torch.from_numpy(np.array(arrays["image"])).to(device=device, dtype=torch.int64)
        self.pos = torch.from_numpy(np.array(arrays["pos"])).to(device=device, dtype=torch.int64)

    def result(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score float32 [C, K], image int64 [C, K], loc int32 [C, K, 2]); missing: NaN, -1, 0."""
        c, n = self.score.shape
        score = np.full((c, self.k), np.nan, dtype=np.float32)
        image = np.full((c, self.k), -1, dtype=np.int64)
        loc = np.zeros((c, self.k, 2), dtype=np.int32)
        score[:, :n] = self.score.cpu().numpy()
        image[:, :n] = self.image.cpu().numpy()
        pos = self.pos.cpu().numpy()
        loc[:, :n, 0] = pos // width
        loc[:, :n, 1] = pos % width
        return score, image, loc
