"""Streaming top-k / bottom-k of per-image spatial extremes, on the device, with work proportional to what
can change.

Why: only K winners per unit survive, so memory is O(units * K) whatever the dataset size. The order is
a total order (score, then lower image index first) so results do not depend on batching or sharding.

Each unit has K places (slots, in no particular order; `result()` sorts them). Once they are all taken, a
new image can only enter by beating the unit's worst kept score: images arrive in increasing index order,
so a tie loses to the kept, lower index. That per-unit threshold is exact, and on CPU a batch first
compares its scores with it; only units with a candidate are merged, and only the slots that change are
written. Each winner also keeps its heatmap: the unit's values over the grid positions around the
winning one (`HeatGeometry`), cut when the image enters, so positions and heatmaps cost nothing for the
many images that never do. Off the CPU (no host syncs) every unit is merged, with only its K best new
images, the only ones that can enter (without groups).

With source groups (crops and mirrors of one photo), at most `per_source` winners come from one group:
in each merge a winner whose group already has `per_source` better ones drops out. That stays exact when
streaming: a group's winner is only ever displaced by a better winner of the same group, so the kept set
never loses a place another image would have needed, and the threshold argument above still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scopecli.collect import kernels
from scopecli.core import devices
from scopecli.collect.crops import heat_origins

_LAST = torch.iinfo(torch.int64).max  # image index an empty slot sorts by: after every real image


def _maps(values: torch.Tensor, image: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """values[image, unit] ([M, P] rows of values [N, c, P]) as one contiguous row gather (index_select of a flat
    view: a row copy, about three times faster on CPU than advanced indexing) when each row is contiguous and
    rows are P apart (a unit slice of a contiguous [N, C, P] batch); advanced indexing otherwise."""
    n, c, p = values.shape
    s0, s1, s2 = values.stride()
    if (s2 != 1 and p > 1) or s1 != p or s0 % max(p, 1) or n == 0 or c == 0 or p == 0:
        return values[image, unit]
    per = s0 // p  # rows per image in the flat view
    flat = torch.as_strided(values, ((n - 1) * per + c, p), (p, 1), values.storage_offset())
    return flat.index_select(0, image * per + unit)


@dataclass(frozen=True)
class HeatGeometry:
    """Where a layer's heatmaps sit: the position grid and the (rows, columns) kept around a winner."""

    grid: tuple[int, int]
    size: tuple[int, int]


class StreamingExtremes:
    """Keeps, per unit, the K largest (or smallest) per-image scores with image index, grid position and
    (with a geometry) heatmap.

    Images must arrive in increasing image-index order (the engine guarantees it).
    groups: int64 tensor image index -> source group id (None: every image its own group); per_source:
    winners allowed per group (0: no limit). An empty slot holds score NaN and image -1.
    """

    def __init__(self, channels: int, k: int, largest: bool, device: torch.device, heat: HeatGeometry | None = None,
                 groups: torch.Tensor | None = None, per_source: int = 0):
        self.k = int(k)
        self.largest = largest
        self.geometry = heat
        self.groups = groups.to(device) if groups is not None else None
        self.per_source = int(per_source) if groups is not None else 0
        self._fill = float("-inf") if largest else float("inf")  # sort key of a NaN score
        # find the units a batch can change (one host sync: free on CPU) or merge them all (accelerators)
        self.skip_units = devices.host_paths(device)
        hs, ws = heat.size if heat is not None else (0, 0)
        self.score = torch.full((channels, self.k), float("nan"), dtype=torch.float32, device=device)
        self.image = torch.full((channels, self.k), -1, dtype=torch.int64, device=device)
        self.pos = torch.zeros(channels, self.k, dtype=torch.int64, device=device)
        self.heat = torch.zeros(channels, self.k, hs, ws, dtype=torch.float32, device=device)

    def update(self, score: torch.Tensor, pos: torch.Tensor, image: torch.Tensor) -> None:
        """The plain reference: score, pos [N, C] per-image extreme and its flat position, image [N] (no
        heatmaps, no groups; tests check `update_located` against it): one sort of everything."""
        if self.k == 0 or score.shape[0] == 0:
            return
        c = score.shape[1]
        s = torch.cat([self.score, score.t().float()], dim=1)
        im = torch.cat([self.image, image.view(1, -1).expand(c, -1)], dim=1)
        p = torch.cat([self.pos, pos.t().long()], dim=1)
        order = self._order(self._key(s), s, im, self.k)[0]
        self.score, self.image, self.pos = torch.gather(s, 1, order), torch.gather(im, 1, order), torch.gather(p, 1, order)

    def update_located(self, score: torch.Tensor, image: torch.Tensor, values: torch.Tensor) -> None:
        """score [N, C] per-image extremes of values [N, C, P], image [N]: the position (first arg-max /
        arg-min, as `Tensor.max(dim)` gives) and heatmap are found only for the new winners."""
        new = self.start(score.shape[0])
        if new is not None:
            self.merge_units(new, 0, score.shape[1], score, image, values)
            self.commit(new)

    def start(self, n: int):
        """A batch of n images begins: merge_units takes it unit range by unit range (disjoint ranges may run
        on different threads), commit ends it. None when there is nothing to do."""
        if self.k == 0 or n == 0:
            return None
        return n

    def commit(self, new) -> None:
        """End the batch begun by start (merge_units writes the slots in place)."""

    def _key(self, score: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(score, nan=self._fill)

    def threshold(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sort key of the worst kept score of units lo:hi, whether all their K slots are taken)."""
        key = self._key(self.score[lo:hi])
        worst = key.amin(1) if self.largest else key.amax(1)
        return worst, (self.image[lo:hi] >= 0).all(1)

    def _order(self, key: torch.Tensor, scores: torch.Tensor, images: torch.Tensor, kn: int):
        """(columns of the kept winners best first [C, kn], how many of them are real winners [C]): by key,
        ties by lower image, empty slots last; with groups at most per_source per group (a dropped entry
        sorts after the real ones)."""
        order = torch.sort(torch.where(images >= 0, images, _LAST), dim=1, stable=True).indices
        order = torch.gather(order, 1, torch.sort(torch.gather(key, 1, order), dim=1, descending=self.largest,
                                                  stable=True).indices)
        img = torch.gather(images, 1, order)
        real = img >= 0
        if self.per_source:
            m = img.shape[1]
            g = torch.where(real, self.groups[img.clamp(min=0)], -1 - torch.arange(m, device=img.device))
            same = g.unsqueeze(2) == g.unsqueeze(1)  # [C, M, M]; an empty slot is in no group
            earlier = torch.ones(m, m, dtype=torch.bool, device=g.device).tril(-1)
            rank = (same & earlier).sum(2)  # better winners of the same group
            real = real & (rank < self.per_source) & ~torch.isnan(torch.gather(scores, 1, order))
            order = torch.gather(order, 1, torch.sort((~real).to(torch.int8), dim=1, stable=True).indices)
        return order[:, :kn], real.sum(1).clamp(max=kn)

    def merge_units(self, new, lo: int, hi: int, score: torch.Tensor, image: torch.Tensor,
                    values: torch.Tensor, known: torch.Tensor | None = None) -> None:
        """Units lo:hi of a batch: score [N, hi - lo], image [N], values [N, hi - lo, P]; known (optional): int32
        [N, hi - lo] first positions of the maps' extremes where already found (-1 elsewhere)."""
        if new is None or hi <= lo:
            return
        compiled = values.dtype == torch.float32 and kernels.available(values.device)
        width = self.geometry.grid[1] if self.geometry is not None else 1
        if compiled and not self.per_source:
            # one pass over the batch's scores per unit, no torch ops (the same slots as below)
            kernels.merge(self, lo, hi, score=score, image=image, values=values, known=known, grid_w=width)
            return
        key = self._key(score.t().float())  # [c, N]
        if not self.skip_units:
            self._merge_all(lo, hi, key, score, image, values)
            return
        worst, full = self.threshold(lo, hi)
        beats = key > worst.view(-1, 1) if self.largest else key < worst.view(-1, 1)
        rows = torch.nonzero(beats.any(1) | ~full).view(-1)  # the units this batch can change
        if rows.numel() == 0:
            return
        units = rows + lo
        n = key.shape[1]
        s = torch.cat([self.score[units], score.t()[rows].float()], dim=1)
        im = torch.cat([self.image[units], image.view(1, -1).expand(len(rows), n)], dim=1)
        order, real = self._order(torch.cat([self._key(self.score[units]), key[rows]], dim=1), s, im, self.k)
        k = self.k
        place = torch.arange(k, device=order.device).view(1, -1)
        won = place < real.view(-1, 1)  # [a, k] places held by real winners
        kept = torch.zeros(len(rows), k + n, dtype=torch.bool, device=order.device)
        kept.scatter_(1, order, won)
        entering = kept[:, k:]  # [a, N] new images that won a place
        free = ~kept[:, :k]  # [a, k] slots whose entry lost (or that were empty)
        # the t-th entering image of a unit takes its t-th free slot; free slots left over become empty
        need = entering.sum(1, keepdim=True)
        take = free & (free.cumsum(1) <= need)
        r_new, c_new = torch.nonzero(entering, as_tuple=True)
        r_slot, c_slot = torch.nonzero(take, as_tuple=True)  # both row-major: pairs line up
        clear = free & ~take
        if bool(clear.any()):
            r_clr, c_clr = torch.nonzero(clear, as_tuple=True)
            self.score[units[r_clr], c_clr] = float("nan")
            self.image[units[r_clr], c_clr] = -1
        if r_new.numel() == 0:
            return
        u = units[r_slot]
        entered = s[r_new, k + c_new]
        self.score[u, c_slot] = entered
        self.image[u, c_slot] = im[r_new, k + c_new]
        unit = rows[r_new]
        if compiled:
            # the entering score is its map's extreme: its first position is a scan that stops there, and the
            # heatmap is cut from the map in place (no copy of whole maps)
            lost = kernels.locate(values, image=c_new, unit=unit, target=entered, slot_u=u, slot_c=c_slot,
                                  pos=self.pos, heat=self.heat, grid_w=width, known=known)
            if not bool(lost.any()):
                return
            c_new, unit, u, c_slot = c_new[lost], unit[lost], u[lost], c_slot[lost]  # scores not in their maps
        maps = _maps(values, c_new, unit)  # [M, P]: the entering images' maps
        arg = self._arg(maps)
        self.pos[u, c_slot] = arg
        if self.geometry is not None:
            self.heat[u, c_slot] = self._cut(maps, arg)

    def _merge_all(self, lo, hi, key, score, image, values) -> None:
        """Every unit of lo:hi, with only its K best new images (all of them with groups: dropped ones make
        room for later ones) and no host sync (for accelerators): the slots are rewritten best first."""
        c, n = key.shape
        k = self.k
        m = n if self.per_source else min(k, n)
        best = torch.sort(key, dim=1, descending=self.largest, stable=True).indices[:, :m]  # ties: lower image
        s = torch.cat([self.score[lo:hi], torch.gather(score.t().float(), 1, best)], dim=1)
        im = torch.cat([self.image[lo:hi], image[best]], dim=1)
        order, real = self._order(torch.cat([self._key(self.score[lo:hi]), torch.gather(key, 1, best)], dim=1),
                                  s, im, k)
        empty = torch.arange(k, device=order.device).view(1, -1) >= real.view(-1, 1)
        old = order.clamp(max=k - 1)
        new = (order - k).clamp(min=0)  # [c, k] entry among the best new (where order >= k)
        took = (order >= k) & ~empty
        rows = torch.arange(c, device=order.device).view(-1, 1).expand(-1, k)
        maps = _maps(values, torch.gather(best, 1, new).reshape(-1), rows.reshape(-1))  # [c * k, P]
        arg = self._arg(maps).view(c, k)
        self.pos[lo:hi] = torch.where(took, arg, torch.gather(self.pos[lo:hi], 1, old))
        if self.geometry is not None:
            cut = self._cut(maps, arg.view(-1)).view(c, k, *self.heat.shape[2:])
            oldheat = torch.gather(self.heat[lo:hi], 1, old.view(c, k, 1, 1).expand(-1, -1, *self.heat.shape[2:]))
            self.heat[lo:hi] = torch.where(took.view(c, k, 1, 1), cut, oldheat)
        self.score[lo:hi] = torch.where(empty, float("nan"), torch.gather(s, 1, order))
        self.image[lo:hi] = torch.where(empty, -1, torch.gather(im, 1, order))

    def _arg(self, maps: torch.Tensor) -> torch.Tensor:
        """First position of each row's max (min), int64 [M]: what argmax (argmin) gives, NaN counting as the
        extreme, from max(dim) (min(dim)), which is about twice as fast on CPU."""
        return (maps.max(1) if self.largest else maps.min(1)).indices

    def _cut(self, rows: torch.Tensor, arg: torch.Tensor) -> torch.Tensor:
        """The heatmap [M, hs, ws] of each map rows [M, P] around its winning position arg [M]."""
        (gh, gw), (hs, ws) = self.geometry.grid, self.geometry.size
        if (hs, ws) == (gh, gw):  # the whole grid
            return rows.reshape(-1, gh, gw).float()
        oy, ox = heat_origins(arg // gw, arg % gw, (hs, ws), (gh, gw))
        window = (torch.arange(hs, device=rows.device).view(-1, 1) * gw
                  + torch.arange(ws, device=rows.device).view(1, -1)).view(1, -1)
        return torch.gather(rows, 1, (oy * gw + ox).view(-1, 1) + window).view(-1, hs, ws).float()

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
        n = shape[1]  # a state saved by an older version may hold fewer slots: the rest are empty
        self.score[:, n:], self.image[:, n:], self.pos[:, n:], self.heat[:, n:] = float("nan"), -1, 0, 0.0
        for name in ("score", "image", "pos", "heat"):
            current = getattr(self, name)
            current[:, :n] = torch.from_numpy(np.array(arrays[name])).to(device=current.device, dtype=current.dtype)

    def result(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(score float32 [C, K], image int64 [C, K], loc int32 [C, K, 2], heat float32 [C, K, hs, ws] or None),
        best first; missing: NaN, -1, 0, NaN."""
        order, _ = self._order(self._key(self.score), self.score, self.image, self.k)
        score = torch.gather(self.score, 1, order).cpu().numpy()
        image = torch.gather(self.image, 1, order).cpu().numpy()
        pos = torch.gather(self.pos, 1, order).cpu().numpy()
        score[image < 0] = np.nan
        loc = np.stack([pos // width, pos % width], -1).astype(np.int32)
        loc[image < 0] = 0
        heat = None
        if self.geometry is not None:
            idx = order.view(*order.shape, 1, 1).expand(-1, -1, *self.heat.shape[2:])
            heat = torch.gather(self.heat, 1, idx).cpu().numpy()
            heat[image < 0] = np.nan
        return score, image, loc, heat
