"""Streaming top-k / bottom-k of per-image spatial extremes, on the device, one small sort per batch.

Why: only K winners per unit survive, so memory is O(units * K) whatever the dataset size. The order is
a total order (score, then lower image index first) so results do not depend on batching or sharding.

Each winner also keeps its heatmap: the unit's values over the grid positions around the winning one
(`HeatGeometry`), cut when the image enters the top K, so heatmaps cost nothing for the many images
that never do. With source groups (crops and mirrors of one photo), at most `per_source` winners come
from one group: after each batch's sort, a winner whose group already has `per_source` better ones
drops out. That stays exact when streaming: a group's winner is only ever displaced by a better winner
of the same group, so the kept set never loses a place another image would have needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scopecli.collect.crops import heat_origins


@dataclass(frozen=True)
class HeatGeometry:
    """Where a layer's heatmaps sit: the position grid and the (rows, columns) kept around a winner."""

    grid: tuple[int, int]
    size: tuple[int, int]


class StreamingExtremes:
    """Keeps, per unit, the K largest (or smallest) per-image scores with image index, grid position and
    (with a geometry) heatmap.

    Images must arrive in increasing image-index order (the engine guarantees it): then a stable sort
    of [kept, new] breaks score ties in favour of the lower image index.
    groups: int64 tensor image index -> source group id (None: every image its own group); per_source:
    winners allowed per group (0: no limit).
    """

    def __init__(self, channels: int, k: int, largest: bool, device: torch.device, heat: HeatGeometry | None = None,
                 groups: torch.Tensor | None = None, per_source: int = 0):
        self.k = int(k)
        self.largest = largest
        self.geometry = heat
        self.groups = groups.to(device) if groups is not None else None
        self.per_source = int(per_source) if groups is not None else 0
        self.score = torch.empty(channels, 0, dtype=torch.float32, device=device)
        self.image = torch.empty(channels, 0, dtype=torch.int64, device=device)
        self.pos = torch.empty(channels, 0, dtype=torch.int64, device=device)
        hs, ws = heat.size if heat is not None else (0, 0)
        self.heat = torch.empty(channels, 0, hs, ws, dtype=torch.float32, device=device)

    def update(self, score: torch.Tensor, pos: torch.Tensor, image: torch.Tensor) -> None:
        """The plain reference: score, pos [N, C] per-image extreme and its flat position, image [N] (no
        heatmaps, no groups; tests check `update_located` against it)."""
        if self.k == 0 or score.shape[0] == 0:
            return
        c = score.shape[1]
        s = torch.cat([self.score, score.t().float()], dim=1)
        im = torch.cat([self.image, image.view(1, -1).expand(c, -1)], dim=1)
        p = torch.cat([self.pos, pos.t().long()], dim=1)
        key = torch.nan_to_num(s, nan=float("-inf") if self.largest else float("inf"))
        order = torch.sort(key, dim=1, descending=self.largest, stable=True).indices[:, : self.k]
        self.score, self.image, self.pos = torch.gather(s, 1, order), torch.gather(im, 1, order), torch.gather(p, 1, order)

    def update_located(self, score: torch.Tensor, image: torch.Tensor, values: torch.Tensor) -> None:
        """score [N, C] per-image extremes of values [N, C, P], image [N]: the position (first arg-max /
        arg-min, as `Tensor.max(dim)` gives) and heatmap are found only for the new winners."""
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
                torch.empty(c, kn, dtype=torch.int64, device=dev),
                torch.zeros(c, kn, *self.heat.shape[2:], dtype=torch.float32, device=dev),
                torch.zeros(c, dtype=torch.int64, device=dev))  # filled columns per unit (per-source drops)

    def _order(self, key: torch.Tensor, scores: torch.Tensor, images: torch.Tensor, kn: int):
        """(columns of the kept winners best first [C, kn], how many of them are real winners [C]): the
        sort, then at most per_source per group (a dropped or empty place sorts after the real ones)."""
        order = torch.sort(key, dim=1, descending=self.largest, stable=True).indices
        if not self.per_source:
            return order[:, :kn], None
        img = torch.gather(images, 1, order)
        g = self.groups[img.clamp(min=0)]
        m = g.shape[1]
        same = g.unsqueeze(2) == g.unsqueeze(1)  # [C, M, M]
        earlier = torch.ones(m, m, dtype=torch.bool, device=g.device).tril(-1)
        rank = (same & earlier).sum(2)  # better winners of the same group
        drop = (rank >= self.per_source) | (img < 0) | torch.isnan(torch.gather(scores, 1, order))
        keep = torch.sort(drop.to(torch.int8), dim=1, stable=True).indices[:, :kn]
        return torch.gather(order, 1, keep), (~drop).sum(1).clamp(max=kn)

    def merge_units(self, new, lo: int, hi: int, score: torch.Tensor, image: torch.Tensor,
                    values: torch.Tensor) -> None:
        """Units lo:hi of a batch into `new`: score [N, hi - lo], image [N], values [N, hi - lo, P]."""
        if new is None or hi <= lo:
            return
        new_score, new_image, new_pos, new_heat, filled = new
        old = self.score.shape[1]
        c = hi - lo
        kn = new_score.shape[1]
        s = torch.cat([self.score[lo:hi], score.t().float()], dim=1)
        im = torch.cat([self.image[lo:hi], image.view(1, -1).expand(c, -1)], dim=1)
        fill = float("-inf") if self.largest else float("inf")
        key = torch.nan_to_num(s, nan=fill)
        order, real = self._order(key, s, im, kn)
        filled[lo:hi] = kn if real is None else real
        torch.gather(s, 1, order, out=new_score[lo:hi])
        torch.gather(im, 1, order, out=new_image[lo:hi])
        pos = new_pos[lo:hi]
        heat = new_heat[lo:hi]
        if values.device.type != "cpu":  # accelerators: full arg-reductions beat a host sync (nonzero)
            arg = (values.argmax(2) if self.largest else values.argmin(2)).long()  # [N, c]
            cand_pos = torch.cat([self.pos[lo:hi], arg.t()], dim=1)
            torch.gather(cand_pos, 1, order, out=pos)
            if self.geometry is not None:
                maps = self._cut(values.transpose(0, 1).reshape(-1, values.shape[2]), arg.t().reshape(-1))
                maps = torch.cat([self.heat[lo:hi], maps.view(c, -1, *maps.shape[1:])], dim=1)
                torch.gather(maps, 1, order.view(c, kn, 1, 1).expand(-1, -1, *maps.shape[2:]), out=heat)
            return
        if old:
            kept = order.clamp(max=old - 1)
            torch.gather(self.pos[lo:hi], 1, kept, out=pos)
            if self.geometry is not None:
                idx = kept.view(c, kn, 1, 1).expand(-1, -1, *heat.shape[2:])
                torch.gather(self.heat[lo:hi], 1, idx, out=heat)
        unit, col = torch.nonzero(order >= old, as_tuple=True)
        if unit.numel():
            rows = values[order[unit, col] - old, unit]  # [M, P]: the new winners' maps
            arg = (rows.argmax(1) if self.largest else rows.argmin(1)).long()
            pos[unit, col] = arg
            if self.geometry is not None:
                heat[unit, col] = self._cut(rows, arg)

    def _cut(self, rows: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
        """The heatmap [M, hs, ws] of each map rows [M, P] around its winning position arg [M]."""
        (gh, gw), (hs, ws) = self.geometry.grid, self.geometry.size
        maps = rows.view(-1, gh, gw).float()
        oy, ox = heat_origins(arg // gw, arg % gw, (hs, ws), (gh, gw))
        iy = (oy.view(-1, 1) + torch.arange(hs, device=maps.device)).view(-1, hs, 1)
        ix = (ox.view(-1, 1) + torch.arange(ws, device=maps.device)).view(-1, 1, ws)
        m = torch.arange(maps.shape[0], device=maps.device).view(-1, 1, 1)
        return maps[m, iy, ix]

    def commit(self, new) -> None:
        """Make the state filled by merge_units current. With per-source drops a unit may have fewer real
        winners than places: its empty places hold NaN and image -1 (they sort last next time)."""
        if new is None:
            return
        score, image, pos, heat, filled = new
        if self.per_source:
            empty = torch.arange(score.shape[1], device=score.device).view(1, -1) >= filled.view(-1, 1)
            score[empty] = float("nan")
            image[empty] = -1
        self.score, self.image, self.pos, self.heat = score, image, pos, heat

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The kept winners as plain arrays (what a resumed collect needs to go on exactly)."""
        return {"score": self.score.cpu().numpy(), "image": self.image.cpu().numpy(), "pos": self.pos.cpu().numpy(),
                "heat": self.heat.cpu().numpy()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Continue from `state_arrays()` of a tracker with the same units, K and geometry; ValueError otherwise."""
        if set(arrays) != {"score", "image", "pos", "heat"}:
            raise ValueError(f"StreamingExtremes state holds {sorted(arrays)}")
        channels = self.score.shape[0]
        shape = tuple(arrays["score"].shape)
        if len(shape) != 2 or shape[0] != channels or shape[1] > self.k or any(
                tuple(arrays[name].shape) != shape for name in ("image", "pos")) \
                or tuple(arrays["heat"].shape) != shape + tuple(self.heat.shape[2:]):
            raise ValueError(f"StreamingExtremes state of shape {shape} does not fit {channels} units, k={self.k}")
        device = self.score.device
        self.score = torch.from_numpy(np.array(arrays["score"])).to(device=device, dtype=torch.float32)
        self.image = torch.from_numpy(np.array(arrays["image"])).to(device=device, dtype=torch.int64)
        self.pos = torch.from_numpy(np.array(arrays["pos"])).to(device=device, dtype=torch.int64)
        self.heat = torch.from_numpy(np.array(arrays["heat"])).to(device=device, dtype=torch.float32)

    def result(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(score float32 [C, K], image int64 [C, K], loc int32 [C, K, 2], heat float32 [C, K, hs, ws] or None);
        missing: NaN, -1, 0, NaN."""
        c, n = self.score.shape
        score = np.full((c, self.k), np.nan, dtype=np.float32)
        image = np.full((c, self.k), -1, dtype=np.int64)
        loc = np.zeros((c, self.k, 2), dtype=np.int32)
        score[:, :n] = self.score.cpu().numpy()
        image[:, :n] = self.image.cpu().numpy()
        pos = self.pos.cpu().numpy()
        loc[:, :n, 0] = pos // width
        loc[:, :n, 1] = pos % width
        loc[image < 0] = 0
        heat = None
        if self.geometry is not None:
            heat = np.full((c, self.k) + tuple(self.heat.shape[2:]), np.nan, dtype=np.float32)
            heat[:, :n] = self.heat.cpu().numpy()
            heat[image < 0] = np.nan
        return score, image, loc, heat
