"""Rich terminal summaries for `scope diff`, `scope query` and `scope show` (the CLI just prints them).

Why separate: the computations return plain records (JSON-able); how they read in a terminal is
a different job, and scores are always shown beside their chance floors.
"""

from __future__ import annotations

import math

import numpy as np
from rich.console import Group
from rich.table import Table

from scopecli.compare.show import path_text, votes_text
from scopecli.core.termtable import table
from rich.text import Text


def _n(x, fmt: str = ".3f") -> str:
    if x is None:
        return "-"
    x = float(x)
    return "-" if math.isnan(x) or math.isinf(x) else format(x, fmt)


def _vs_floor(v, floor) -> Text:
    """'0.842 (floor 0.061)', dimmed when the score does not beat its floor."""
    s = f"{_n(v)} [{_n(floor)}]"
    beaten = v is not None and floor is not None and np.isfinite(v) and np.isfinite(floor) and v > floor
    return Text(s, style="bold" if beaten else "dim")


def diff_summary(res, top: int = 5) -> Group:
    """Headline, best-match table, unit matching table and (same architecture) unit changes."""
    a = res.model_a.get("name") or res.model_a.get("spec") or "A"
    b = res.model_b.get("name") or res.model_b.get("spec") or "B"
    head = Text.assemble(
        ("A ", "bold"), f"{a} ({res.path_a})   ", ("B ", "bold"), f"{b} ({res.path_b})\n",
        f"{res.n_shared} shared probe images (matched by sha256"
        + (f"; CKA on a seeded subsample of {res.n_cka}" if res.n_cka < res.n_shared else "")
        + (f"; {res.n_nonfinite} left out: inf/NaN activations" if res.n_nonfinite else "") + "); floors in [brackets] = max CKA over "
        f"{res.permutations} seeded shuffles of B's images (seed {res.seed}); dim = not above floor",
    )
    t = Table(title="Layer similarity: best layer of B for each layer of A (by debiased CKA)")
    for col in ("layer of A", "units", "best layer of B", "units", "linear CKA [floor]",
                "debiased CKA [floor]", "same name: debiased"):
        t.add_column(col, justify="right" if "units" in col or "CKA" in col or "same" in col else "left")
    best = res.best_b()
    for i, name in enumerate(res.layers_a):
        j = best[i]
        same = ""
        if name in res.layers_b:
            k = res.layers_b.index(name)
            same = _vs_floor(res.cka_debiased[i, k], res.floor_debiased[i, k])
        if j < 0:
            t.add_row(name, str(res.units_a[i]), "-", "-", "-", "-", same)
            continue
        t.add_row(name, str(res.units_a[i]), res.layers_b[j], str(res.units_b[j]),
                  _vs_floor(res.cka_linear[i, j], res.floor_linear[i, j]),
                  _vs_floor(res.cka_debiased[i, j], res.floor_debiased[i, j]), same)
    parts = [head, t]
    if res.pairs:
        m = Table(title="Unit matching (Pearson r over probe images; floor = chance best r, 95th pct)")
        for col in ("A layer", "B layer", "mean best r", "assigned r", "floor", "best buddies",
                    "no match", f"top {top} pairs a->b (r)"):
            m.add_column(col, justify="left" if "layer" in col or "pairs" in col else "right")
        for p in res.pairs:
            s = p.matching.summary()
            pairs = ", ".join(f"{ua}->{ub} ({r:.2f})" for ua, ub, r in p.matching.top_pairs(top))
            m.add_row(p.layer_a, p.layer_b, _n(s["mean_best_corr"]), _n(s["mean_assigned_corr"]), _n(s["floor"]),
                      f"{s['buddies']}/{s['units_a']}", f"{s['unmatched_a']}/{s['units_a']}", pairs)
        parts.append(m)
    if res.changes:
        c = Table(title="Same architecture: unit i of A vs unit i of B")
        for col in ("layer", "median self-r", "units r<0.5", "top-k Jaccard", "median |Δmax|",
                    f"changed most (unit r)"):
            c.add_column(col, justify="left" if col in ("layer",) or "changed" in col else "right")
        for ch in res.changes:
            r = ch.self_corr
            live = r[~np.isnan(r)]
            jac = _n(np.nanmean(ch.jaccard)) + f" (k={ch.k})" if ch.jaccard is not None and \
                not np.isnan(ch.jaccard).all() else "-"
            dmax = _n(np.nanmedian(np.abs(ch.delta["max"]))) if "max" in ch.delta and \
                not np.isnan(ch.delta["max"]).all() else "-"
            most = ", ".join(f"{u} ({r[u]:.2f})" for u in ch.changed_most(top))
            c.add_row(ch.layer, _n(np.median(live)) if live.size else "-",
                      f"{int((live < 0.5).sum())}/{len(r)}", jac, dmax, most)
        parts.append(c)
    rows = [(side, r) for side in ("a", "b") for r in (res.spaces or {}).get(side, [])]
    if rows:
        cols = [("side", "left"), ("layer", "left"), ("units", "right"), ("kind", "left"), ("held-out R²", "right"),
                ("expl. var.", "right"), ("dead", "right"), ("purity", "right"), ("lift", "right"),
                ("left out", "right")]
        cells = []
        for side, r in rows:
            p = r["purity"] or {}
            cells.append([side.upper(), r["layer"], r["units"], r["kind"], _n(r["r2"], ".3f"),
                          _n(r["explained_variance"], ".1%"), _n(r["dead_fraction"], ".1%"),
                          _n(p.get("median_purity"), ".2f"), _n(p.get("median_lift"), ".1f"),
                          f"{p['left_out']}/{p['units']}" if p else "-"])
        parts.append(table("Unit spaces and their layers: fit quality on held-out sample rows; median label purity / "
                           "lift of the top-8 examples (left out: units firing on fewer than 4 images)", cols, cells,
                           keep=("side", "layer")))
    return Group(*parts)


def query_table(hits, title: str) -> Table:
    rows = [[h.artifact, h.layer, h.unit, _n(h.score),
             "-" if h.top_label is None else f"{h.top_label} ({_n(h.top_label_frac, '.0%')})", _n(h.max, ".3g"),
             _n(h.frac_pos, ".0%")] for h in hits]
    cols = [("artifact", "left"), ("layer", "left"), ("unit", "right"), ("score", "right"), ("top label", "left"),
            ("max", "right"), ("frac +", "right")]
    return table(title, cols, rows, keep=("layer", "unit"))


def class_summary(reports: list[dict]) -> Group:
    """`scope query --class`: per artifact and layer, the class's top units by share of its positive attribution,
    then the ablation sentence and the accuracy it leaves."""
    parts = []
    for rep in reports:
        parts.append(Text.assemble((rep["class"], "bold"), f"  output {rep['class_index']} · {rep['images']} images · "
                                   f"{rep['artifact']}"))
        for L in rep["layers"]:
            rows = [[L["layer"], u["unit"], _n(u["share"], ".1%"), _n(u["attribution"], "+.3g")] for u in L["units"]]
            parts.append(table(f"{L['layer']}: units by importance (share of the class's positive attribution; "
                               "attribution = mean activation x gradient of its logit)",
                               [("layer", "left"), ("unit", "right"), ("share", "right"), ("attribution", "right")],
                               rows, keep=("layer", "unit")))
            a = L.get("ablation")
            if a:
                r = np.asarray(a["random_acc"], float)
                parts.append(Text(L["sentence"], style="bold"))
                parts.append(Text(f"accuracy on its images {_n(a['base_acc'], '.0%')} -> {_n(a['top_acc'], '.0%')} with "
                                  f"these units ablated (random {a['k']}: {_n(r.mean() if r.size else None, '.0%')})",
                                  style="dim"))
            else:
                parts.append(Text("no ablation check stored for this class at this layer", style="dim"))
    return Group(*parts)


def unit_summary(info: dict) -> Group:
    head = Text.assemble((f"{info['layer']}:{info['unit']}", "bold"),
                         f"  {info['model']}  ({info['artifact']}), unit {info['unit']} of "
                         f"{info['units_in_layer']}, receptive field {info['receptive_field']['size']}px")
    parts = [head]
    sp = info.get("space")
    if sp:
        q = sp["quality"]
        fit = ", ".join(f"{label} {_n(q.get(key), fmt)}" for key, label, fmt in (
            ("r2", "held-out R²", ".3f"), ("explained_variance", "explained variance", ".1%"),
            ("dead_fraction", "dead", ".1%")) if q.get(key) is not None)
        nl = sp["nonlinearity"] + (f" {sp['k_active']} of {sp['k']}" if sp["nonlinearity"] == "topk" else "")
        terms = " ".join(f"{'+' if d['weight'] >= 0 else '−'}{abs(d['weight']):.2f}·{sp['base']}:{d['channel']}"
                         for d in sp["direction_channels"])
        parts.append(Text(f"unit space {sp['name']} on {sp['base']} ({sp['method']}, {nl}; {fit})\n"
                          f"direction (unit length; largest channels): {terms}", style="dim"))
    st = info["stats"]
    if st:
        t = Table(title="statistics over all positions of all images")
        for k in st:
            t.add_column(k, justify="right")
        t.add_row(*[_n(v, ".4g") if not isinstance(v, int) else str(v) for v in st.values()])
        parts.append(t)
    else:
        parts.append(Text("no statistics collected for this unit", style="dim"))
    if info["renders"]:
        t = Table(title="renders")
        for col in ("objective", "#", "param", "steps", "size", "seed", "act", "robust act", "act / dataset max"):
            t.add_column(col, justify="left" if col in ("objective", "param") else "right")
        for r in info["renders"]:
            t.add_row(r["objective"], str(r["diversity_index"]), r["param"], str(r["steps"]), str(r["size"]),
                      str(r["seed"]), _n(r["act_final"], ".4g"), _n(r["act_robust"], ".4g"),
                      _n(r["dataset_max_ratio"], ".2f"))
        parts.append(t)
        for r in info["renders"]:  # format 1.3: faithfulness evidence, where measured
            line = path_text(r)
            if line:
                parts.append(Text(f"{r['objective']} #{r['diversity_index']}: {line}",
                                  style="bold yellow" if r.get("path_flagged") else ""))
    prof = info.get("label_profile")
    if prof:
        t = Table(title="what it fires on: classes of its top examples and of its strongest images (lift = "
                        "fraction / base rate; one label per image)" + (f" — {prof['note']}" if prof["note"] else ""))
        for col in ("view", "class", "count", "fraction", "base rate", "lift"):
            t.add_column(col, justify="left" if col in ("view", "class") else "right")
        for view, key in (("top examples", "top_examples"), ("top 1% images", "strongest_images")):
            for r in prof[key]:
                t.add_row(view, r["class"], str(r["count"]), _n(r["fraction"], ".0%"), _n(r["base_rate"], ".1%"),
                          _n(r["lift"], ".1f"))
        parts.append(t)
    fx = info.get("effects")
    if fx:  # format 1.3: what the unit votes for in the model's output
        t = Table(title="what it votes for: mean attribution (activation x gradient) to the logit of each class, "
                        f"over the class's images (class: {fx['target']})")
        for col in ("", "class", "attribution", "images"):
            t.add_column(col, justify="left" if col in ("", "class") else "right")
        for key, title in (("votes_for", "votes for"), ("votes_against", "votes against")):
            for r in fx[key][:5]:
                t.add_row(title, r["class"], _n(r["attribution"], "+.4g"), str(r["images"]))
        parts.append(t)
    ins = info.get("inputs")
    if ins:
        if ins["note"]:
            parts.append(Text(f"strongest inputs from {ins['from']}: {ins['note']}", style="dim"))
        else:
            t = Table(title=f"strongest inputs from {ins['from']} (gradient x input at the unit's maximum, mean over "
                            f"{ins['examples']} top examples): positive, then negative")
            for col in ("input unit", "attribution"):
                t.add_column(col, justify="left" if col == "input unit" else "right")
            for r in ins["rows"]:
                t.add_row(f"{r['layer']}:{r['unit']}", _n(r["attribution"], "+.4g"))
            parts.append(t)
    for which in ("top", "bottom"):
        ex = info["examples"].get(which, [])
        if not ex:
            continue
        silent = [e for e in ex if e.get("fires") is False]
        t = Table(title=f"{which} dataset examples")
        for col in ("#", "score", "class", "image"):
            t.add_column(col, justify="right" if col in ("#", "score") else "left")
        for e in ex:
            score = _n(e["score"], ".4g") + (" (no response)" if e.get("fires") is False else "")
            t.add_row(str(e["rank"]), score, e["class"] or "-", e["image_path"] or "-")
        parts.append(t)
        if silent and len(silent) == len(ex):
            parts.append(Text(f"no response: the unit does not fire on any of its {which} examples "
                              "(its heatmaps are flat)", style="dim"))
    if not info["renders"] and not any(info["examples"].values()):
        parts.append(Text("no renders or dataset examples stored for this unit", style="dim"))
    return Group(*parts)


def layer_summary(info: dict) -> Group:
    """`scope show FILE LAYER`: the layer's caricatures and activation atlas."""
    parts = [Text.assemble((info["layer"], "bold"), f"  {info['model']}  ({info['artifact']}), {info['units']} units")]
    if info["caricatures"]:
        t = Table(title="caricatures (cosine to the photo's activation; magnitude ratio: how much it was exaggerated)")
        for col in ("photo", "cosine", "magnitude ratio", "steps", "power", "param", "sha256"):
            t.add_column(col, justify="left" if col in ("photo", "param", "sha256") else "right")
        for c in info["caricatures"]:
            t.add_row(c["photo"], _n(c["cosine"]), _n(c["magnitude_ratio"], ".2f"), str(c["steps"]), f"{c['power']:g}",
                      c["param"], c["source_sha256"][:12])
        parts.append(t)
    a = info.get("atlas")
    if a:
        parts.append(Text(f"activation atlas: {a['grid']}x{a['grid']} grid, {a['cells']} non-empty cells from "
                          f"{a['vectors']} sample vectors, layout {a['layout']} (seed {a['seed']}), cells rendered "
                          f"with {a['steps']} steps"))
    if not info["caricatures"] and not a:
        parts.append(Text("no caricatures or activation atlas stored for this layer (scope caricature, scope atlas)",
                          style="dim"))
    return Group(*parts)
