"""`scope pack`: merge artifacts of one model (e.g. collect shards) into one, exactly.

Image tables are united (sorted by path) and every input's image indices remapped; then every
registered element merges its sections across the inputs (`LayerElement.merge`): renders unite by
key, examples and statistics of disjoint image sets (shards) merge exactly, probe rows unite. The same
unit stored by two inputs over overlapping images (or two different renders under one key) is a
conflict: refused unless prefer="last", which keeps the later input's version. Encoded images are
copied, never re-encoded.
"""

from __future__ import annotations

import os

from scopecli.artifact import registry
from scopecli.artifact.elements import dataset as image_table
from scopecli.artifact.reader import Artifact, open_artifact
from scopecli.artifact.writer import ArtifactWriter
from scopecli.core.errors import ScopeError
from scopecli.core.progress import progress


def _check_inputs(inputs: list, out: str, force: bool) -> list[str]:
    if not inputs:
        raise ScopeError("pack needs at least one input artifact")
    if os.path.isdir(out):
        raise ScopeError(f"{out}: is a directory; give an output file name such as {os.path.join(out, 'packed.h5')}")
    in_abs = [os.path.abspath(os.fspath(p)) for p in inputs]
    if os.path.exists(out) and os.path.abspath(out) not in in_abs and not force:
        raise ScopeError(f"{out} exists; pass --force to replace it (or include it as an input to merge into it)")
    return [os.path.basename(p) for p in in_abs]


def _layers(arts: list[Artifact]) -> dict:
    layers: dict = {}
    for a in arts:
        for name in a.layers:
            rec = a.layer(name)
            old = layers.setdefault(name, rec)
            if old != rec:
                raise ScopeError(f"layer {name!r} has different shapes in the inputs ({old.shape} vs {rec.shape})")
    return layers


def pack(inputs: list, out, prefer: str | None = None, force: bool = False, quiet: bool = True) -> dict:
    """Merge `inputs` into `out`; returns a summary dict. prefer='last' resolves conflicts by input order."""
    if prefer not in (None, "last"):
        raise ScopeError(f"--prefer must be 'last', got {prefer!r}")
    out = os.fspath(out)
    names = _check_inputs(inputs, out, force)
    arts: list[Artifact] = []
    try:
        for p in inputs:
            arts.append(open_artifact(p))
        fp = arts[0].fingerprint
        for a, n in zip(arts[1:], names[1:]):
            if a.fingerprint != fp:
                raise ScopeError(f"{n} holds another model ({a.model.get('spec', '?')}, fingerprint {a.fingerprint[:12]}…) "
                                 f"than {names[0]} ({arts[0].model.get('spec', '?')}, {fp[:12]}…); pack merges one model only")
        tables = [a.dataset for a in arts]
        table, maps = image_table.union_tables(tables, names)
        plan = registry.MergePlan(names=names, image_sets=[set(t.paths) if t is not None else set() for t in tables],
                                  prefer=prefer, image_paths=table.paths if table is not None else [],
                                  image_groups=table.groups() if table is not None else None)
        layers = _layers(arts)
        w = ArtifactWriter(out, arts[0].model, "pack", {"inputs": names, "prefer": prefer}, fresh=True)
        w.open()
        try:
            for a in arts:
                w.add_runs(a.provenance)
            if table is not None:
                w.set_dataset(table)
            with progress(len(layers), "pack", quiet=quiet) as bar:
                for name, rec in layers.items():
                    w.ensure_layer(rec)
                    have = [i for i, a in enumerate(arts) if name in a.layers]
                    for el in registry.layer_elements():
                        parts = [registry.MergeInput(i, names[i], sec, maps[i]) for i in have
                                 if (sec := arts[i].section(name, el.name)) is not None]
                        if parts:
                            merged = el.merge(parts, arts[have[0]].slot(name), plan)
                            if not el.is_empty(merged):
                                w.replace(name, el.name, merged)
                    bar.advance()
            if plan.conflicts:
                more = f" (and {len(plan.conflicts) - 1} more)" if len(plan.conflicts) > 1 else ""
                raise ScopeError(f"conflicting content: {plan.conflicts[0]}{more}; "
                                 "pass --prefer last to keep the later input's version")
            for a in arts:  # staged content holds bytes, not file handles: `out` may be one of the inputs
                a.close()
            w.commit()
        except BaseException:
            w.abort()
            raise
    finally:
        for a in arts:
            a.close()
    with open_artifact(out) as res:
        info = res.info()
    return {"output": out, "inputs": names, "layers": len(info["layers"]),
            "images": info["dataset"]["count"] if info["dataset"] else 0, "size_bytes": info["size_bytes"]}
