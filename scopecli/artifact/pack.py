"""`scope pack`: merge artifacts of one model into one file, exactly.

Collect shards (disjoint image sets) merge like one run over the union: image tables are united and
sorted by relative path, image indices in examples and probes are remapped, top-k/bottom-k and
statistics merge through `scopecli.collect.merge`. The same unit stored by two inputs over
overlapping images (or two different renders under one key) is a conflict: refused unless
prefer="last", which keeps the later input's version. Encoded images are copied, never re-encoded.
"""

from __future__ import annotations

import os

import numpy as np

from scopecli.artifact.reader import WHICH, Artifact, open_artifact
from scopecli.artifact.writer import ArtifactWriter, load_example_rows, load_render_rows
from scopecli.errors import ScopeError
from scopecli.records import ExampleSet, ImageTable, StatsBlock


def _union_table(arts: list[Artifact], names: list[str]) -> tuple[ImageTable | None, list[np.ndarray | None]]:
    """Union of the inputs' image tables sorted by path, and each input's old->new index map."""
    rows: dict[str, tuple] = {}
    classes: list[str] | None = None
    skipped: dict[str, str] = {}
    for art, name in zip(arts, names):
        t = art.dataset
        if t is None:
            continue
        if t.class_names:
            if classes is None or not classes:
                classes = list(t.class_names)
            elif list(t.class_names) != classes:
                raise ScopeError(f"{name}: its class names differ from the other inputs'; cannot pack different label sets")
        for i, p in enumerate(t.paths):
            r = (t.sha256[i], int(t.width[i]), int(t.height[i]), int(t.label[i]))
            old = rows.get(p)
            if old is not None and old[0] != r[0]:
                raise ScopeError(f"{name}: image {p} has different content (sha256) than in another input")
            rows.setdefault(p, r)
        for p, why in t.skipped:
            skipped.setdefault(p, why)
    if not rows and all(a.dataset is None for a in arts):
        return None, [None] * len(arts)
    paths = sorted(rows)
    pos = {p: i for i, p in enumerate(paths)}
    maps = [None if a.dataset is None else np.array([pos[p] for p in a.dataset.paths], np.int64) for a in arts]
    table = ImageTable(
        paths=paths, sha256=[rows[p][0] for p in paths],
        width=np.array([rows[p][1] for p in paths], np.int32), height=np.array([rows[p][2] for p in paths], np.int32),
        label=np.array([rows[p][3] for p in paths], np.int32), class_names=classes or [],
        skipped=sorted((p, w) for p, w in skipped.items() if p not in pos),
    )
    return table, maps


def _remap(ii: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    out = np.full_like(ii, -1)
    ok = ii >= 0
    if ok.any():
        if m is None:
            raise ScopeError("an input holds examples or probes but no image table; it is not a valid artifact")
        out[ok] = m[ii[ok]]
    return out


def _same_example_row(a: dict, b: dict) -> bool:
    return (np.array_equal(a["image_index"], b["image_index"]) and np.array_equal(a["score"], b["score"], equal_nan=True)
            and np.array_equal(a["loc"], b["loc"]) and np.array_equal(a["box"], b["box"]) and a["blobs"] == b["blobs"])


def _rows_to_set(units: list[int], rows: dict[int, dict]) -> ExampleSet:
    """Example rows -> ExampleSet whose 'patches' are opaque (bytes, h, w) tokens carried by merge_examples."""
    k = max(len(rows[u]["score"]) for u in units)
    n = len(units)
    score = np.full((n, k), np.nan, np.float32)
    ii = np.full((n, k), -1, np.int64)
    loc = np.zeros((n, k, 2), np.int32)
    box = np.zeros((n, k, 4), np.int32)
    patches = []
    for i, u in enumerate(units):
        r = rows[u]
        kk = len(r["score"])
        score[i, :kk], ii[i, :kk], loc[i, :kk], box[i, :kk] = r["score"], r["image_index"], r["loc"], r["box"]
        patches.append([(b, int(r["hw"][j, 0]), int(r["hw"][j, 1])) if b else None for j, b in enumerate(r["blobs"])]
                       + [None] * (k - kk))
    return ExampleSet(units=np.asarray(units, np.int64), score=score, image_index=ii, loc=loc, box=box, patches=patches)


def _set_to_rows(ex: ExampleSet) -> dict[int, dict]:
    rows = {}
    for i, u in enumerate(ex.units):
        k = ex.score.shape[1]
        hw = np.zeros((k, 2), np.int32)
        blobs = []
        for j in range(k):
            tok = ex.patches[i][j]
            if tok is None:
                blobs.append(None)
            else:
                blobs.append(tok[0])
                hw[j] = tok[1], tok[2]
        rows[int(u)] = dict(score=ex.score[i].copy(), image_index=ex.image_index[i].copy(), loc=ex.loc[i].copy(),
                            box=ex.box[i].copy(), blobs=blobs, hw=hw)
    return rows


def _stats_subset(st: StatsBlock, units: list[int]) -> StatsBlock:
    idx = np.searchsorted(st.units, units)
    return StatsBlock(
        units=st.units[idx], count=st.count[idx], mean=st.mean[idx], std=st.std[idx], min=st.min[idx],
        max=st.max[idx], frac_pos=st.frac_pos[idx], quantiles=st.quantiles[idx],
        sketch={k: v[idx] for k, v in st.sketch.items()}, sketch_attrs=dict(st.sketch_attrs),
    )


def _concat_stats(blocks: list[StatsBlock]) -> StatsBlock:
    blocks = [b for b in blocks if len(b.units)]
    keys = sorted(set().union(*(b.sketch for b in blocks))) if blocks else []
    cat = lambda f: np.concatenate([getattr(b, f) for b in blocks])  # noqa: E731
    out = StatsBlock(
        units=cat("units"), count=cat("count"), mean=cat("mean"), std=cat("std"), min=cat("min"), max=cat("max"),
        frac_pos=cat("frac_pos"), quantiles=np.concatenate([b.quantiles for b in blocks]),
        sketch={k: np.concatenate([np.asarray(b.sketch[k]) for b in blocks]) for k in keys},
        sketch_attrs=dict(blocks[0].sketch_attrs) if blocks else {},
    )
    order = np.argsort(out.units, kind="stable")
    return _stats_subset(out, out.units[order].tolist()) if len(order) else out


def pack(inputs: list, out, prefer: str | None = None, force: bool = False, quiet: bool = True) -> dict:
    """Merge `inputs` into `out`; returns a summary dict. prefer='last' resolves conflicts by input order."""
    from scopecli.collect.merge import merge_examples, merge_stats
    from scopecli.progress import progress

    if prefer not in (None, "last"):
        raise ScopeError(f"--prefer must be 'last', got {prefer!r}")
    if not inputs:
        raise ScopeError("pack needs at least one input artifact")
    out = os.fspath(out)
    if os.path.isdir(out):
        raise ScopeError(f"{out}: is a directory; give an output file name such as {os.path.join(out, 'packed.h5')}")
    in_abs = [os.path.abspath(os.fspath(p)) for p in inputs]
    if os.path.exists(out) and os.path.abspath(out) not in in_abs and not force:
        raise ScopeError(f"{out} exists; pass --force to replace it (or include it as an input to merge into it)")
    names = [os.path.basename(p) for p in in_abs]
    arts: list[Artifact] = []
    try:
        for p in inputs:
            arts.append(open_artifact(p))
        fp = arts[0].fingerprint
        for a, n in zip(arts[1:], names[1:]):
            if a.fingerprint != fp:
                raise ScopeError(f"{n} holds another model ({a.model.get('spec', '?')}, fingerprint {a.fingerprint[:12]}…) "
                                 f"than {names[0]} ({arts[0].model.get('spec', '?')}, {fp[:12]}…); pack merges one model only")
        table, maps = _union_table(arts, names)
        imgsets = [set(a.dataset.paths) if a.dataset is not None else set() for a in arts]
        conflicts: list[str] = []

        def disjoint(i: int, j: int) -> bool:
            return not (imgsets[i] & imgsets[j])

        layers: dict[str, object] = {}
        for a in arts:
            for name in a.layers:
                rec = a.layer(name)
                old = layers.setdefault(name, rec)
                if old != rec:
                    raise ScopeError(f"layer {name!r} has different shapes in the inputs ({old.shape} vs {rec.shape})")

        params = {"inputs": names, "prefer": prefer}
        w = ArtifactWriter(out, arts[0].model, "pack", params, fresh=True)
        w.open()
        try:
            for a in arts:
                w._extra_runs.extend(a.provenance)
            if table is not None:
                w.set_dataset(table)
            with progress(len(layers), "pack", quiet=quiet) as bar:
                for name, rec in layers.items():
                    w.ensure_layer(rec)
                    have = [i for i, a in enumerate(arts) if name in a.layers]
                    # renders: union by (unit, objective, diversity_index)
                    rrows, rsrc = {}, {}
                    for i in have:
                        for key, row in load_render_rows(arts[i], name).items():
                            if key in rrows and rrows[key]["png"] != row["png"] and prefer is None:
                                conflicts.append(f"{name}:{key[0]} render ({key[1]}, {key[2]}) in {names[rsrc[key]]} and {names[i]}")
                            rrows[key], rsrc[key] = row, i
                    if rrows:
                        w._renders_of(name).rows.update(rrows)
                    # examples
                    for which in WHICH:
                        merged: dict[int, dict] = {}
                        src: dict[int, list[int]] = {}
                        formats, quality = set(), 90
                        for i in have:
                            loaded = load_example_rows(arts[i], name, which)
                            if loaded is None:
                                continue
                            rows, fmts, quality = loaded
                            formats |= fmts
                            for r in rows.values():
                                r["image_index"] = _remap(r["image_index"], maps[i])
                            shared = [u for u in sorted(rows) if u in merged]
                            to_merge = []
                            for u in shared:
                                if _same_example_row(merged[u], rows[u]):
                                    continue
                                if all(disjoint(j, i) for j in src[u]):
                                    to_merge.append(u)
                                elif prefer == "last":
                                    merged[u], src[u] = rows[u], [i]
                                else:
                                    conflicts.append(f"{name}:{u} {which} examples in {names[src[u][-1]]} and {names[i]} (overlapping images)")
                            if to_merge:
                                res = merge_examples(_rows_to_set(to_merge, merged), _rows_to_set(to_merge, rows), which == "top")
                                merged.update(_set_to_rows(res))
                                for u in to_merge:
                                    src[u].append(i)
                            for u in rows:
                                if u not in src:
                                    merged[u], src[u] = rows[u], [i]
                        if merged:
                            w._put_examples_encoded(name, which, merged, formats, quality)
                    # stats
                    current: StatsBlock | None = None
                    ssrc: dict[int, list[int]] = {}
                    for i in have:
                        st = arts[i].stats(name)
                        if st is None:
                            continue
                        if current is None:
                            current = st
                            ssrc = {int(u): [i] for u in st.units}
                            continue
                        cur_units = set(int(u) for u in current.units)
                        shared = [int(u) for u in st.units if int(u) in cur_units]
                        merge_u, replace_u = [], []
                        for u in shared:
                            if all(disjoint(j, i) for j in ssrc[u]):
                                merge_u.append(u)
                            elif prefer == "last":
                                replace_u.append(u)
                            else:
                                a_, b_ = _stats_subset(current, [u]), _stats_subset(st, [u])
                                if not (np.array_equal(a_.count, b_.count) and np.allclose(a_.mean, b_.mean, equal_nan=True)):
                                    conflicts.append(f"{name}:{u} stats in {names[ssrc[u][-1]]} and {names[i]} (overlapping images)")
                        parts = []
                        keep = [int(u) for u in current.units if int(u) not in set(merge_u) | set(replace_u)]
                        parts.append(_stats_subset(current, keep))
                        if merge_u:
                            parts.append(merge_stats(_stats_subset(current, merge_u), _stats_subset(st, merge_u)))
                            for u in merge_u:
                                ssrc[u].append(i)
                        new_u = [int(u) for u in st.units if int(u) not in cur_units] + replace_u
                        if new_u:
                            parts.append(_stats_subset(st, sorted(new_u)))
                            for u in new_u:
                                ssrc[u] = [i]
                        current = _concat_stats(parts)
                    if current is not None and len(current.units):
                        w.put_stats(name, current)
                    # probe: union of rows by (remapped) image
                    prow: dict[int, np.ndarray] = {}
                    psrc: dict[int, int] = {}
                    for i in have:
                        pb = arts[i].probe(name)
                        if pb is None:
                            continue
                        for ii, acts in zip(_remap(pb.image_index, maps[i]), pb.acts):
                            ii = int(ii)
                            if ii in prow and not np.array_equal(prow[ii], acts) and prefer is None:
                                conflicts.append(f"{name} probe image {table.paths[ii]} in {names[psrc[ii]]} and {names[i]}")
                            prow[ii], psrc[ii] = acts, i
                    if prow:
                        from scopecli.records import ProbeBlock

                        idx = sorted(prow)
                        w.put_probe(name, ProbeBlock(np.array(idx, np.int64), np.stack([prow[j] for j in idx])))
                    bar.advance()
            if conflicts:
                more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
                raise ScopeError(f"conflicting content: {conflicts[0]}{more}; pass --prefer last to keep the later input's version")
            for a in arts:
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
