"""`scope collect` as one library call: share of the images, resume state, artifact, torchrun packing.

Kept out of the CLI so Python users get exactly what the command does. The artifact is written through
`ArtifactWriter` (replaced only on success); pass-1 state is checkpointed beside it for `--resume`.
"""

from __future__ import annotations

from scopecli.artifact import ArtifactWriter
from scopecli.collect.checkpoint import Pass1Checkpoint, paths_digest
from scopecli.collect.engine import CollectSettings, collect
from scopecli.core.errors import ScopeError
from scopecli.jobs import distributed as dist
from scopecli.jobs.bind import attach_spaces
from scopecli.views.circuits import LayerOrder, run_circuits
from scopecli.views.effects import run_effects


def default_output(name: str, k: int, n: int, torchrun: bool) -> str:
    """`<model>.h5`, or `<model>.shard-K-of-N.h5` for a job-array share."""
    return f"{name}.h5" if n == 1 or torchrun else f"{name}.shard-{k}-of-{n}.h5"


def run_collect(loaded, source, layers=None, settings=None, output: str | None = None, shard: str | None = None,
                resume: bool = False, checkpoint_s: float = 300.0, quiet: bool = False,
                circuits: str | None = None, effects: bool = False) -> dict | None:
    """Collect `source` into the artifact; returns a JSON-able summary (None on non-leader torchrun ranks).

    shard: `k/n` for one share of a job array (torchrun ranks take theirs from the environment).
    circuits: then store the strongest inputs of the collected layers from this layer ('prev': each one's
    previous default layer; see `scopecli/views/circuits.py`).
    effects: then store what each unit votes for, with the ablation check (`scopecli/views/effects.py`); a shard
    stores sums only (they add up in `scope pack`; run `scope effects` on the packed file for the check).
    The summary's `notes` hold skipped files and resume messages for the caller to print."""

    settings = settings or CollectSettings()
    share = dist.resolve_share(shard)
    settings.shard = (share.k, share.n)
    settings.check()
    if checkpoint_s < 0:
        raise ScopeError(f"--checkpoint must be >= 0 seconds, got {checkpoint_s}")
    k, n = settings.shard
    if circuits is not None and n > 1:
        raise ScopeError("--circuits needs every image's examples: run scope circuits on the packed artifact instead")
    if circuits not in (None, "prev"):  # a bad --circuits layer is refused before the long run, not after
        order = LayerOrder.of(loaded.module, loaded.preprocess.crop)
        start = order.index(circuits)
        if not any(name in order.names and order.index(name) > start for name in (layers or order.defaults)):
            raise ScopeError(f"--circuits {circuits}: no collected layer runs after it")
    final = output or default_output(loaded.name, k, n, share.torchrun)
    path = dist.part_path(final, k, n) if share.torchrun else final
    quiet = quiet or (share.torchrun and not share.leader)
    notes: list[str] = []
    params = settings.params() | {"data": source.describe(), "layers": list(layers) if layers else "default"}
    if layers:  # unit spaces (BASE@SPACE) are read from the artifact being written
        attach_spaces(loaded, final, layers)
    state = Pass1Checkpoint(path, {key: v for key, v in params.items() if key not in ("workers", "loader")} | {
        "model": loaded.fingerprint, "images": paths_digest(source.paths)}, every_s=checkpoint_s, resume=resume)
    with dist.RankGroup(share, settings.device) as ranks:
        try:
            with ArtifactWriter(path, loaded.info(), "collect", params) as writer:
                res = collect(loaded, source, list(layers) if layers else None, settings, sink=writer, quiet=quiet,
                              log=notes.append, checkpoint=state)
        except ScopeError:
            state.remove()  # bad input (no usable images, changed dataset): nothing worth resuming
            raise
        state.remove()
        if state.loaded is not None:
            notes.append(f"resumed pass 1 after {state.start_batch} batches")
        if circuits is not None:  # the hook point: strongest inputs from the examples just stored
            summary_c = run_circuits(path, source, None if circuits == "prev" else circuits,
                                     [r.name for r in res.layers], loaded=loaded, device=settings.device,
                                     quiet=quiet, log=notes.append, strict=False)
        if effects:
            summary_e = run_effects(path, source, [r.name for r in res.layers if "@" not in r.name], loaded=loaded,
                                    ablation=n == 1, device=settings.device, quiet=quiet)
        summary = res.summary() | {
            "output": path,
            "notes": notes,
            "patches": res.timings.get("patches"),
            "images_per_s": res.timings.get("images_per_s"),
            "device": res.timings.get("device"),
            "seconds": round(res.timings.get("pass1_s", 0.0) + res.timings.get("pass2_s", 0.0), 2),
        }
        if circuits is not None:
            summary["circuits"] = summary_c["layers"]
        if effects:
            summary["effects"] = summary_e
        if share.torchrun:
            ranks.barrier()
            if not share.leader:
                return None
            packed = dist.pack_parts(final, [dist.part_path(final, i, n) for i in range(1, n + 1)])
            summary = summary | {"output": final, "ranks": n, "packed": packed}
    return summary
