"""Scale-out glue shared by `scope render` and `scope collect`: torchrun ranks and `--shard k/n` job arrays.

Both commands split their work into n deterministic shares (render: units, collect: images), run one
share per process into a part file, and merge the parts with `scope pack`. Under
`torchrun --nproc_per_node N -m scopecli render|collect ...` (RANK / WORLD_SIZE in the environment) each
rank writes `OUT.part-K-of-N.h5`; after a barrier (gloo on CPU, nccl on GPU) rank 0 packs them, with what
OUT already held, into OUT and removes the parts. Without torchrun, `--shard k/n` runs one share and the
user packs the outputs (e.g. SLURM job arrays).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta

from scopecli.core.errors import ScopeError
from scopecli.core.fileio import write_bytes_atomic
from scopecli.artifact.pack import pack

BARRIER_TIMEOUT = timedelta(days=7)  # a rank may wait for slower ranks for as long as a render takes


@dataclass(frozen=True)
class Share:
    """Which share of the work this process does: k of n (1-based); `torchrun` when ranks were launched."""

    k: int = 1
    n: int = 1
    torchrun: bool = False

    @property
    def leader(self) -> bool:
        return self.k == 1


def launched_ranks() -> tuple[int, int] | None:
    """(rank, world size) when started by torchrun with more than one process, else None."""
    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world is None or rank is None:
        return None
    try:
        w, r = int(world), int(rank)
    except ValueError:
        raise ScopeError(f"bad torchrun environment: RANK={rank!r} WORLD_SIZE={world!r}") from None
    if w < 1 or not 0 <= r < w:
        raise ScopeError(f"bad torchrun environment: RANK={r} WORLD_SIZE={w}")
    return (r, w) if w > 1 else None


def parse_shard(text: str | None) -> tuple[int, int]:
    """'k/n' (1-based: 1/4 is the first of four) -> (k, n); the one --shard parser, for render and collect."""
    if not text:
        return (1, 1)
    try:
        k_s, n_s = str(text).split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise ScopeError(f"--shard must look like k/n (e.g. 1/4), got '{text}'") from None
    if n < 1 or not 1 <= k <= n:
        raise ScopeError(f"--shard {text}: need 1 <= k <= n")
    return (k, n)


def resolve_share(shard: str | None) -> Share:
    """The share of this process: from torchrun's environment, or from --shard k/n, or the whole job."""
    ranks = launched_ranks()
    if ranks is not None:
        if shard:
            raise ScopeError("--shard splits work without torchrun; under torchrun each rank takes its share itself")
        return Share(ranks[0] + 1, ranks[1], torchrun=True)
    k, n = parse_shard(shard)
    return Share(k, n)


def split_units(targets: list, k: int, n: int, batches: list[list] | None = None) -> list:
    """Share k/n of render targets, dealt round-robin: whole `batches` when given (each share then runs
    exactly the batches one process would, so its pixels are bit-identical), else whole units (all their
    diversity images).

    Round-robin over the plan's order balances layers of different cost across shares; a unit's image
    seeds depend only on the run seed, model, layer and unit, so the pixels do not depend on n beyond
    float rounding of different batch mates.
    """
    if batches is None:
        units: dict[tuple, list] = {}
        for t in targets:
            units.setdefault((t.layer, t.unit), []).append(t)
        batches = list(units.values())
    return [t for i, group in enumerate(batches) if i % n == k - 1 for t in group]


def part_path(out: str, k: int, n: int) -> str:
    """Where rank k of n writes its part of OUT under torchrun."""
    root, ext = os.path.splitext(out)
    return f"{root}.part-{k}-of-{n}{ext or '.h5'}"


class RankGroup:
    """The torchrun process group (only a barrier is used): gloo on CPU, nccl when ranks use GPUs."""

    def __init__(self, share: Share, device: str = "auto"):
        self.share = share
        self.device = device
        self._dist = None

    def __enter__(self) -> "RankGroup":
        if not self.share.torchrun:
            return self
        import torch
        import torch.distributed as dist

        use_cuda = torch.cuda.is_available() and str(self.device).lower() in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=BARRIER_TIMEOUT)
        self._dist = dist
        return self

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def __exit__(self, *exc) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._dist = None


def write_part_summary(part: str, summary: dict) -> None:
    write_bytes_atomic(part + ".json", json.dumps(summary, default=str).encode("utf-8"))


def read_part_summaries(parts: list[str]) -> list[dict]:
    out = []
    for p in parts:
        try:
            with open(p + ".json", encoding="utf-8") as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            out.append({})
    return out


def pack_parts(out: str, parts: list[str], quiet: bool = True) -> dict:
    """Rank 0: merge the parts (after what OUT already holds; later parts win conflicts) into OUT, then
    remove the parts. OUT is replaced atomically, so a failure leaves it as it was and keeps the parts."""
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise ScopeError(f"part file {missing[0]} is missing; a rank failed — the parts that exist are kept")
    inputs = ([out] if os.path.exists(out) else []) + parts
    res = pack(inputs, out, prefer="last", quiet=quiet)
    for p in parts:
        for f in (p, p + ".json"):
            try:
                os.remove(f)
            except OSError:
                pass
    return res


def combine_counts(summaries: list[dict], keys: tuple[str, ...]) -> dict:
    """Sum numeric fields of the ranks' summaries (e.g. rendered, requested)."""
    out = {}
    for k in keys:
        vals = [s.get(k) for s in summaries if isinstance(s.get(k), (int, float))]
        out[k] = sum(vals) if vals else None
    return out
