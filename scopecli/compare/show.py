"""`scope show`: one unit from an artifact — statistics, renders and examples — and its card PNG.

Why: the unit card is what researchers paste into papers and chats; it must carry the numbers
that make a picture trustworthy (achieved activation vs. the dataset maximum, example scores and
classes), not just the pictures. The pixel arrays `load_unit(..., pixels=True)` returns are as stored
(HxWxC, 8 or 16 bits); the cards show them as the gallery does (`scopecli.artifact.display`: gray for one
channel, the false-colour composite of the model's display channels for N).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scopecli.artifact.display import DisplaySpec, composite, mosaic
from scopecli.core import heatmaps
from scopecli.compare.probes import open_checked
from scopecli.core.errors import ScopeError
from scopecli.core.fileio import check_output_file, did_you_mean
from scopecli.core.units import parse_unit_address
from scopecli.compare.drawing import draw_text, save_png, text_size

THUMB = 112  # pixel side of each picture on the card
CARD_SUFFIXES = (".png",)  # a card is a PNG; another name would hide what the file holds


def _f(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def load_unit(path: str | Path, address: str, pixels: bool = False, display: str | None = None) -> dict:
    """Everything about one unit as plain data; with `pixels`, also the decoded `_image`/`_patch`
    arrays the card needs (the terminal and JSON views never decode an image)."""
    art = open_checked(path)
    try:
        return unit_info(art, address, pixels, path, display)
    finally:
        art.close()


def unit_info(art, address: str, pixels: bool = False, path: str | Path | None = None,
              display: str | None = None) -> dict:
    """`load_unit` of an artifact already open (`scope serve` answers /api/unit from its open files); `display`:
    --display-channels instead of the file's recorded mapping."""
    path = art.path if path is None else path
    layer, index = parse_unit_address(address)
    if layer not in art.layers:
        raise ScopeError(f"{path}: no layer named {layer}" + did_you_mean(layer, art.layers, n=3))
    rec = art.layer(layer)
    if index >= rec.units:
        raise ScopeError(f"unit {index} is out of range for layer {layer}: it has units 0..{rec.units - 1}")
    view = art.unit(layer, index)
    table = art.dataset
    spec = DisplaySpec.of(art.model).remapped(display)
    class_names = table.class_names if table is not None else []

    def cls(image_index: int) -> str | None:
        if table is None or not 0 <= image_index < len(table.label):
            return None
        lab = int(table.label[image_index])
        return class_names[lab] if 0 <= lab < len(class_names) else None

    renders = [{
        "objective": r.objective, "diversity_index": r.diversity_index, "param": r.param, "steps": r.steps,
        "size": r.size, "seed": r.seed, "act_final": _f(r.act_final), "act_robust": _f(r.act_robust),
        "dataset_max_ratio": _f(r.dataset_max_ratio), "_image": r.image if pixels else None,
    } for r in view.renders]
    examples = {}
    for which in ("top", "bottom"):
        examples[which] = [_example(e, cls(e.image_index), rec, pixels, 1.0 if which == "top" else -1.0, spec)
                           for e in view.examples.get(which, [])]
    out = {
        "artifact": str(path), "model": art.model.get("name") or art.model.get("spec"),
        "layer": layer, "unit": index, "units_in_layer": rec.units,
        "receptive_field": {"size": rec.rf_size, "stride": rec.rf_stride, "start": rec.rf_start},
        "stats": {k: _f(v) if isinstance(v, float) else v for k, v in view.stats.items()},
        "renders": renders, "examples": examples, "_pixels": pixels, "_display": spec,
    }
    if rec.layout is not None:  # format 1.1 and later; 1.0 files read as before
        out["layout"] = {"kind": rec.layout.kind, "grid": list(rec.layout.grid),
                         "prefix_tokens": rec.layout.prefix, "field": rec.layout.field,
                         "global_context": rec.layout.global_context}
    profile = view.fields.get("label_profile")
    if profile is not None and (profile.rows or profile.strongest or profile.note):
        out["label_profile"] = profile.to_json()
    if view.fields.get("direction") is not None:  # a unit of a unit space: what it is made of
        out["space"] = space_json(art.section(layer, "space"), index)
    inputs = view.fields.get("inputs")
    if inputs is not None and (len(inputs) or inputs.note):  # format 1.1: strongest inputs (circuits)
        out["inputs"] = inputs.to_json()
        if pixels:
            out["_input_pixels"] = [_unit_picture(art, r.layer, r.unit) for r in inputs]
    effects = view.fields.get("effects")
    if effects:  # format 1.3: the classes the unit votes for and against in the model's output
        out["effects"] = effects_json(effects)
    for r, d in zip(view.renders, renders):  # format 1.3: faithfulness evidence, only where measured
        sim = _f(getattr(r, "path_similarity", None))
        if sim is not None:
            d.update(path_similarity=sim, path_baseline=_f(getattr(r, "path_baseline", None)),
                     path_flagged=bool(getattr(r, "path_flagged", None)))
    return out


def effects_json(effects) -> dict:
    """A unit's votes (`elements.effects.UnitEffects`): for (largest mean attribution first), then against."""
    def row(r):
        return {"class": r.class_name, "class_index": r.class_index, "attribution": _f(r.attribution),
                "images": r.images}
    return {"target": getattr(effects, "target", "") or "label", "votes_for": [row(r) for r in effects.votes_for],
            "votes_against": [row(r) for r in effects.votes_against]}


def space_json(space, unit: int, channels: int = 5) -> dict:
    """A space unit's space (method, fit quality) and its direction: the base channels with the largest
    weights in its unit-length decoder row (what the unit is made of), and the row's length."""
    row = space.decoder[unit].astype(float)
    norm = float(np.linalg.norm(row))
    top = np.argsort(-np.abs(row), kind="stable")[:channels]
    quality = {k: _f(v) if isinstance(v, (int, float)) else v for k, v in space.quality.items()}
    return {"name": space.name, "base": space.base, "method": space.method, "k": space.k,
            "nonlinearity": space.nonlinearity, "k_active": space.k_active, "note": space.note, "quality": quality,
            "direction_norm": _f(norm),
            "direction_channels": [{"channel": int(c), "weight": _f(row[c] / norm) if norm > 0 else 0.0} for c in top]}


def _unit_picture(art, layer: str, unit: int) -> np.ndarray | None:
    """What stands for an input unit on a card: its first render, else its best top example, else None."""
    if layer not in art.layers:
        return None
    view = art.unit(layer, unit)
    for r in view.renders:
        return r.image
    for e in view.examples.get("top", []):
        if e.patch is not None:
            return e.patch
    return None


def _example(e, class_name, rec, pixels: bool, sign: float, spec: DisplaySpec = DisplaySpec()) -> dict:
    d = {"rank": e.rank, "score": _f(e.score), "image_index": e.image_index, "image_path": e.image_path,
         "class": class_name, "box": list(e.box), "_patch": e.patch if pixels else None}
    if e.shown is not None:  # format 1.1: where the patch is, and where in it the unit fired
        d["shown"] = list(e.shown)
    if e.heatmap is not None:
        d["heat_origin"] = list(e.heat_origin)
        d["heatmap"] = [[round(float(v), 5) for v in row] for row in e.heatmap]
        d["fires"] = heatmaps.fires(e.heatmap, sign)
        if pixels and d["_patch"] is not None:
            d["_overlay"] = heatmaps.overlay(composite(d["_patch"], spec), e, rec, sign)  # drawn on what a screen shows
    return d


def unit_json(info: dict) -> dict:
    """The JSON view of `load_unit`'s result (pixel arrays dropped)."""
    def strip(d):
        return {k: v for k, v in d.items() if not k.startswith("_")}

    out = strip(info)
    out["renders"] = [strip(r) for r in info["renders"]]
    out["examples"] = {w: [strip(e) for e in lst] for w, lst in info["examples"].items()}
    return out


def _fmt(x, fmt: str) -> str:
    x = float(x)
    return "-" if math.isnan(x) or math.isinf(x) else format(x, fmt)


def votes_text(effects: dict, n: int = 3) -> list[str]:
    """['votes for: red +13.4 (4 images), ...', 'votes against: ...'] of `show`'s effects (empty sides left out)."""
    out = []
    for key, title in (("votes_for", "votes for"), ("votes_against", "votes against")):
        rows = effects.get(key) or []
        if rows:
            items = ", ".join(f"{r['class']} {_fmt(r['attribution'], '+.3g')} ({r['images']} images)" for r in rows[:n])
            out.append(f"{title}: {items}" + (f", … {len(rows) - n} more" if len(rows) > n else ""))
    return out


def path_text(r: dict) -> str | None:
    """'path similarity 0.62 (random unit 0.21)' of a render, with the warning when flagged; None: not measured."""
    if r.get("path_similarity") is None:
        return None
    s = f"path similarity {_fmt(r['path_similarity'], '.2f')}"
    if r.get("path_baseline") is not None:
        s += f" (random unit {_fmt(r['path_baseline'], '.2f')})"
    if r.get("path_flagged"):
        s += ": this picture may not show how the unit responds to photos"
    return s


def profile_text(profile: dict, rows: int = 3) -> str:
    """'goldfish 38% (base 1%, lift 38) · ...' for the top-k view; the note when it is uninformative."""
    if profile.get("note"):
        return profile["note"]
    items = [f"{r['class']} {100 * r['fraction']:.0f}% (base {100 * r['base_rate']:.1f}%, lift {r['lift']:.1f})"
             for r in profile["top_examples"][:rows]]
    return " · ".join(items) if items else "no labelled examples"


def _shown(pixels: np.ndarray | None, spec: DisplaySpec) -> np.ndarray | None:
    """A stored picture as the card shows it: the 8-bit RGB composite (None stays None)."""
    return None if pixels is None else composite(pixels, spec)


def _thumb(pixels: np.ndarray | None) -> Image.Image:
    """A card cell of a picture already as shown (HxWx3 uint8, `_shown`)."""
    if pixels is None:  # the collect run stored no patch for this example
        canvas = Image.new("RGB", (THUMB, THUMB), (225, 225, 225))
        d = ImageDraw.Draw(canvas)
        w, h = text_size(d, "no patch stored")
        draw_text(d, ((THUMB - w) // 2, (THUMB - h) // 2), "no patch stored", fill=(90, 90, 90))
        return canvas
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    scale = THUMB / max(img.width, img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # small patches are enlarged with visible pixels (no invented detail); large ones are downsampled smoothly
    img = img.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (THUMB, THUMB), (240, 240, 240))
    canvas.paste(img, ((THUMB - img.width) // 2, (THUMB - img.height) // 2))
    return canvas


def _fit(d: ImageDraw.ImageDraw, text: str, width: int) -> str:
    if len(text) > width:  # every glyph is at least a pixel wide; a 100k-character class name took minutes
        text = text[: max(width, 1)]
    while text and text_size(d, text)[0] > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def unit_card(info: dict, max_per_row: int = 8) -> Image.Image:
    """A PNG-ready card: header with stats; renders with achieved activation; top and bottom examples
    with score and class name. Needs `load_unit(..., pixels=True)`."""
    if not info.get("_pixels"):
        raise ScopeError("unit_card needs the pictures: load the unit with load_unit(path, address, pixels=True)")
    spec = info.get("_display") or DisplaySpec()
    rows: list[tuple[str, list[tuple[np.ndarray, list[str]]]]] = []
    if info["renders"]:
        rows.append(("renders (act = activation achieved; ratio = act / dataset max)", [
            (_shown(r["_image"], spec), [f"{r['objective']}#{r['diversity_index']}",
                           "act " + ("-" if r["act_final"] is None else f"{r['act_final']:.3g}")
                           + ("" if r["dataset_max_ratio"] is None else f"  x{r['dataset_max_ratio']:.2f}")])
            for r in info["renders"][:max_per_row]]))
    for which, title in (("top", "top dataset examples (score, class)"),
                         ("bottom", "bottom dataset examples (score, class)")):
        ex = info["examples"].get(which, [])
        if ex:
            rows.append((title, [(e["_overlay"] if "_overlay" in e else _shown(e["_patch"], spec),
                                  ["-" if e["score"] is None else f"{e['score']:.3g}"
                                   + ("" if e.get("fires", True) else "  no response"),
                                   e["class"] or Path(e["image_path"] or "?").name])
                                 for e in ex[:max_per_row]]))
    ins = info.get("inputs")
    if ins and ins["rows"]:
        title = (f"strongest inputs from {ins['from']}, excitatory then inhibitory (attribution: gradient x input "
                 f"over {ins['examples']} top examples)")
        pics = list(zip(ins["rows"], info.get("_input_pixels", [None] * len(ins["rows"]))))
        half = max(1, max_per_row // 2)
        pos = [p for p in pics if p[0]["attribution"] > 0]
        neg = [p for p in pics if p[0]["attribution"] < 0]
        shown = pos[:max(half, max_per_row - len(neg[:half]))] + neg[:max(half, max_per_row - len(pos[:half]))]
        rows.append((title, [(_shown(pix, spec), [f"{r['layer']}:{r['unit']}", f"{r['attribution']:+.3g}"])
                             for r, pix in shown[:max_per_row]]))
    st = info["stats"]
    head = [f"{info['model']}   {info['layer']}:{info['unit']}   ({info['artifact']})"]
    if st:
        head.append("   ".join(f"{k} {st[k]:.3g}" for k in ("mean", "std", "min", "max") if st.get(k) is not None)
                    + (f"   positive {100 * st['frac_pos']:.1f}%" if st.get("frac_pos") is not None else ""))
    else:
        head.append("no statistics collected")
    rf = info["receptive_field"]
    head.append(f"receptive field {rf['size']}px, stride {rf['stride']}"
                + ("; examples: heatmap of the unit, ring at its strongest position"
                   if any("_overlay" in e for ex in info["examples"].values() for e in ex) else ""))
    if info.get("label_profile"):
        head.append("fires on: " + profile_text(info["label_profile"]))
    if ins and ins.get("note"):
        head.append(f"strongest inputs: {ins['note']}")
    if info.get("effects"):  # format 1.3
        head.append("; ".join(votes_text(info["effects"])))
    for r in info["renders"][:max_per_row]:
        line = path_text(r)
        if line:
            head.append(f"render {r['objective']}#{r['diversity_index']}: {line}")
    if spec.describe():
        head.append(f"pictures: {spec.describe()}" + (" (16-bit, scaled to 8 bits)" if spec.bit_depth == 16 else ""))
    if not rows:
        head.append("no renders or dataset examples stored for this unit")
    pad, line_h = 8, 13
    cols = max([len(r[1]) for r in rows] + [4])
    width = pad + cols * (THUMB + pad)
    height = pad + len(head) * line_h + pad + sum(line_h + THUMB + 2 * line_h + pad for _ in rows)
    card, d, y = _card_with_head(head, width, height, pad, line_h)
    for title, items in rows:
        draw_text(d, (pad, y), title, fill=(30, 30, 120))
        y += line_h
        for j, (pix, captions) in enumerate(items):
            x = pad + j * (THUMB + pad)
            card.paste(_thumb(pix), (x, y))
            for k, cap in enumerate(captions):
                draw_text(d, (x, y + THUMB + 1 + k * line_h), _fit(d, cap, THUMB), fill="black")
        y += THUMB + 2 * line_h + pad
    return card


def _card_with_head(head: list[str], width: int, height: int, pad: int, line_h: int):
    """A white card of that size with its header lines drawn (the first, the title, in black; the rest in
    gray, each cut to the card's width): (card, its ImageDraw, the y where the body starts). The unit and
    the layer cards share it so their headers look alike."""
    card = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(card)
    y = pad
    for i, s in enumerate(head):
        draw_text(d, (pad, y), _fit(d, s, width - 2 * pad), fill="black" if i == 0 else (60, 60, 60))
        y += line_h
    return card, d, y + pad


def check_card_output(out: str | Path) -> str:
    """Refuse a card path before any work: a folder, a missing folder, or a name not ending in .png."""
    return check_output_file(out, "card.png", CARD_SUFFIXES)


def write_card(info: dict, out: str | Path) -> Path:
    """Render the card and save it as PNG (atomically)."""
    check_card_output(out)
    save_png(unit_card(info), out, CARD_SUFFIXES)
    return Path(out)


# ----------------------------------------------------------------------------------------- a whole layer


def load_layer(path: str | Path, layer: str, pixels: bool = False, display: str | None = None) -> dict:
    """The views of one layer as plain data (`scope show FILE LAYER`): its caricatures and its activation
    atlas (format 1.1); with `pixels`, also the decoded images a layer card needs."""
    art = open_checked(path)
    try:
        return layer_info(art, layer, pixels, path, display)
    finally:
        art.close()


def layer_info(art, layer: str, pixels: bool = False, path: str | Path | None = None,
               display: str | None = None) -> dict:
    """`load_layer` of an artifact already open."""
    path = art.path if path is None else path
    if layer not in art.layers:
        raise ScopeError(f"{path}: no layer named {layer}" + did_you_mean(layer, art.layers, n=3))
    rec = art.layer(layer)
    spec = DisplaySpec.of(art.model).remapped(display)
    out = {"artifact": str(path), "model": art.model.get("name") or art.model.get("spec"), "layer": layer,
           "units": rec.units, "caricatures": [], "atlas": None, "_pixels": pixels, "_display": spec}
    for c in art.caricatures(layer):
        row = {"photo": c.source_name, "source_sha256": c.source_sha256, "cosine": _f(c.cosine),
               "magnitude_ratio": _f(c.magnitude_ratio), "steps": c.steps, "power": c.power, "param": c.param,
               "size": c.size, "seed": c.seed}
        if pixels:
            row["_image"], row["_photo"] = c.image, c.photo
        out["caricatures"].append(row)
    atlas = art.atlas(layer) if hasattr(art, "atlas") else None
    if atlas is not None:
        out["atlas"] = atlas.summary()
        if pixels:
            out["_atlas_mosaic"] = mosaic(atlas.cells, atlas.grid, THUMB // 2, spec)
    if not out["caricatures"] and atlas is None:
        raise ScopeError(f"layer {layer} has no caricatures or activation atlas to show (scope caricature, scope "
                         f"atlas); for a unit give layer:unit, e.g. {layer}:0")
    return out


def layer_json(info: dict) -> dict:
    out = {k: v for k, v in info.items() if not k.startswith("_")}
    out["caricatures"] = [{k: v for k, v in c.items() if not k.startswith("_")} for c in info["caricatures"]]
    return out


def layer_card(info: dict) -> Image.Image:
    """A PNG-ready card of a layer: each photo beside its caricature with the evidence, and the atlas mosaic."""
    if not info.get("_pixels"):
        raise ScopeError("layer_card needs the pictures: load the layer with load_layer(path, layer, pixels=True)")
    pad, line_h = 8, 13
    spec = info.get("_display") or DisplaySpec()
    cars = info["caricatures"]
    mosaic = info.get("_atlas_mosaic")
    head = [f"{info['model']}   {info['layer']}   ({info['artifact']})"]
    if cars:
        head.append("caricatures: photo, then the photo re-optimized so the layer's response is exaggerated "
                    "(cos = cosine to the photo's activation, x = magnitude ratio)")
    if not cars and mosaic is None:
        head.append("no caricatures or activation atlas stored for this layer")
    per_row = 4  # pairs
    rows = [cars[i:i + per_row] for i in range(0, len(cars), per_row)]
    width = max(pad + min(per_row, len(cars)) * (2 * THUMB + 3 * pad), (mosaic.width + 2 * pad) if mosaic is not None
                else 0, 640)
    height = pad + len(head) * line_h + pad + len(rows) * (THUMB + 2 * line_h + pad)
    if mosaic is not None:
        height += line_h + mosaic.height + pad
    card, d, y = _card_with_head(head, width, height, pad, line_h)
    for row in rows:
        for j, c in enumerate(row):
            x = pad + j * (2 * THUMB + 3 * pad)
            card.paste(_thumb(_shown(c["_photo"], spec)), (x, y))
            card.paste(_thumb(_shown(c["_image"], spec)), (x + THUMB + 2, y))
            draw_text(d, (x, y + THUMB + 1), _fit(d, c["photo"], 2 * THUMB), fill="black")
            cos = "-" if c["cosine"] is None else f"{c['cosine']:.2f}"
            mag = "-" if c["magnitude_ratio"] is None else f"{c['magnitude_ratio']:.2f}"
            draw_text(d, (x, y + THUMB + 1 + line_h), f"cos {cos}  x{mag}  ({c['steps']} steps, p={c['power']:g})",
                      fill=(60, 60, 60))
        y += THUMB + 2 * line_h + pad
    if mosaic is not None:
        a = info["atlas"]
        draw_text(d, (pad, y), f"activation atlas: {a['grid']}x{a['grid']} grid, {a['cells']} cells rendered, "
                  f"{a['vectors']} sample vectors, layout {a['layout']}", fill=(30, 30, 120))
        y += line_h
        card.paste(mosaic, (pad, y))
    return card


def write_layer_card(info: dict, out: str | Path) -> Path:
    check_card_output(out)
    save_png(layer_card(info), out, CARD_SUFFIXES)
    return Path(out)
