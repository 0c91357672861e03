"""`scope decompose` as one library call: fit (or import) a unit space on a layer and store it in the artifact.

The space is fitted on the layer's activation sample (`collect --sample N`), needs no images and no model,
and is written as the layer `LAYER@NAME` (its `space` element holds encoder, decoder, provenance and fit
quality). With `data`, the new space's dataset examples, statistics, probes and heatmaps are collected
right away, through the collect library, with the settings of the artifact's last collect run.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np

from scopecli.core.errors import ScopeError
from scopecli.core.records import NONLINEARITIES, UnitSpace, space_record
from scopecli.spaces import data as fitdata
from scopecli.spaces import quality
from scopecli.core.units import check_space_name, space_layer, split_space
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.collect import CollectSettings, open_source
from scopecli.core.devices import resolve_device
from scopecli.core.fileio import check_input_file, did_you_mean
from scopecli.core.progress import progress
from scopecli.jobs.collect import run_collect
from scopecli.model.inputspec import spec_from_dict
from scopecli.model import resolve_model
from scopecli.spaces.importing import read_dictionary
from scopecli.spaces.nmf import ENCODER_NOTE, MAX_ITER, fit_nmf, nmf_shift, nnls_r2, relu_pinv_encoder
from scopecli.spaces.pca import fit_pca
from scopecli.spaces.sae import MAX_EPOCHS, default_k_active, fit_sae

METHODS = ("pca", "nmf", "sae")
COLLECT_KEYS = ("top_k", "bottom_k", "patch_size", "probe", "batch", "lossless", "per_source")


def _default_name(method: str, k: int, from_file: str | None) -> str:
    if from_file is None:
        return f"{method}{k}"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.splitext(os.path.basename(from_file))[0]).strip("-")
    return (stem or "imported")[:64]


def _check_request(art, layer: str, method: str | None, from_file: str | None, name: str | None):
    if split_space(layer)[1] is not None:
        raise ScopeError(f"--layer {layer} is itself a unit space; fit spaces on a model layer")
    if layer not in art.layers:
        raise ScopeError(f"layer {layer!r} is not in {os.path.basename(art.path)}" + did_you_mean(layer, art.layers, n=3))
    if from_file is None and method not in METHODS:
        raise ScopeError(f"--method must be one of {', '.join(METHODS)} (or import a dictionary with --from FILE), "
                         f"got {method!r}")
    if name is not None:
        check_space_name(name)


def _fit(art, layer: str, method: str, k: int | None, seed: int, k_active: int | None, shift: bool, device,
         quiet: bool) -> tuple[UnitSpace, dict]:
    """Fit a space of `method` on the sample of `layer`; (space without quality, quality numbers)."""
    data = fitdata.fit_data(art, layer)
    c = data.width
    if k is None:
        if method != "sae":
            raise ScopeError(f"--k is required for {method} (how many directions to fit)")
        k = 4 * c
    if k < 1:
        raise ScopeError(f"--k must be at least 1, got {k}")
    t0 = time.perf_counter()
    extra: dict = {}
    params: dict = {"k": k}
    if method == "pca":
        comps, mean, evr = fit_pca(data.fit, k)
        space = UnitSpace(layer, "", comps, mean, np.zeros(k, np.float32), comps.copy(), "none", 0, "pca", seed)
        extra["explained_variance"] = evr
        note = "centred PCA: z = V_k (x - mean); decoder = encoder = V_k"
    elif method == "nmf":
        import torch

        b_pre = nmf_shift(data.fit, layer, shift)
        with torch.no_grad(), progress(MAX_ITER, f"decompose: NMF-{k} of {layer}", quiet=quiet, unit="it") as bar:
            h, iters = fit_nmf(np.maximum(data.fit - b_pre, 0), k, seed, device, bar)
        space = UnitSpace(layer, "", relu_pinv_encoder(h), b_pre, np.zeros(k, np.float32), h, "relu", 0, "nmf", seed)
        params.update(iterations=iters, shift="channel minimum" if bool((b_pre != 0).any()) else "none")
        extra["r2_nnls"] = nnls_r2(h, data.valid, b_pre.astype(np.float64), data.fit.mean(axis=0, dtype=np.float64))
        note = ENCODER_NOTE
    else:
        ka = default_k_active(c) if k_active is None else int(k_active)
        batches = -(-len(data.fit) // 1024)
        with progress(MAX_EPOCHS * batches, f"decompose: TopK SAE-{k} (k_active {ka}) of {layer}", quiet=quiet,
                      unit="batch") as bar:
            res = fit_sae(data.fit, data.valid, k, ka, seed, device, bar)
        space = UnitSpace(layer, "", res["encoder"], res["pre_bias"], res["bias"], res["decoder"], "topk", ka, "sae",
                          seed)
        params.update(k_active=ka, epochs=res["epochs"], best_epoch=res["best_epoch"],
                      stopped_early=res["stopped_early"], aux_steps=res["aux_steps"])
        note = "TopK sparse autoencoder: z = relu(topk(W_enc (x - b_pre) + b_enc)), x_hat = b_pre + z W_dec"
    seconds = time.perf_counter() - t0
    space.note, space.params, space.data_sha256 = note, params | data.describe(), data.sha256
    return space, quality.measure(space, data, seconds, **extra)


def _import(art, layer: str, from_file: str, nonlinearity: str, k_active: int | None,
            subtract_b_dec: bool) -> tuple[UnitSpace, dict]:
    t0 = time.perf_counter()
    c = art.layer(layer).units
    d = read_dictionary(from_file, c, layer, subtract_b_dec)
    k = d["encoder"].shape[0]
    if nonlinearity not in NONLINEARITIES:
        raise ScopeError(f"--nonlinearity must be one of {', '.join(NONLINEARITIES)}, got {nonlinearity!r}")
    ka = 0
    if nonlinearity == "topk":
        if k_active is None or not 1 <= int(k_active) <= k:
            raise ScopeError(f"--nonlinearity topk needs --k-active between 1 and {k}")
        ka = int(k_active)
    space = UnitSpace(layer, "", d["encoder"], d["pre_bias"], d["bias"], d["decoder"], nonlinearity, ka, "import", 0,
                      "", note=f"imported from {os.path.basename(from_file)}: {d['mapping']}",
                      params={"file": os.path.basename(from_file), "mapping": d["mapping"],
                              "ignored_keys": d.get("ignored", [])})
    sample = art.sample(layer)
    seconds = time.perf_counter() - t0
    if sample is None or len(sample) == 0:
        q = {"r2": float("nan"), "dead_fraction": float("nan"), "explained_variance": float("nan"),
             "fit_seconds": seconds, "evaluated_on": "nothing: the layer has no activation sample"}
        return space, q
    x = sample.vectors
    data = fitdata.FitData(x, x, fitdata.sample_sha256(sample), False)
    q = quality.measure(space, data, seconds, evaluated_on=f"the whole activation sample ({data.sha256[:12]}…)")
    return space, q


def decompose(path, layer: str, method: str | None = None, k: int | None = None, name: str | None = None,
              seed: int = 0, from_file: str | None = None, data: str | None = None, labels: str | None = None,
              groups: str | None = None, k_active: int | None = None, shift: bool = False, device: str = "auto",
              nonlinearity: str = "relu", subtract_b_dec: bool = True, weights: str | None = None,
              quiet: bool = True) -> dict:
    """Fit (method pca | nmf | sae, k directions) or import (`from_file`) a unit space on `layer` of the artifact
    at `path`, store it as layer `layer@name`; returns a JSON-able summary (with `collected` when `data`:
    the model is rebuilt from the artifact's record, or with `weights`, and checked by fingerprint)."""
    path = check_input_file(path, "scope artifact")
    t0 = time.perf_counter()
    with open_artifact(path) as art:
        _check_request(art, layer, method, from_file, name)
        loaded = None
        if data is not None:  # everything --data needs is checked before anything is fitted
            _check_collect_inputs(art, data, labels, groups)
            loaded = rebuild_model(art, weights)
        if from_file is not None:
            space, q = _import(art, layer, from_file, nonlinearity, k_active, subtract_b_dec)
        else:
            dev = resolve_device(device)
            space, q = _fit(art, layer, method, k, int(seed), k_active, shift, dev, quiet)
        space.name = check_space_name(name or _default_name(space.method, space.k, from_file))
        full = space_layer(layer, space.name)
        if full in art.layers:
            raise ScopeError(f"{os.path.basename(path)} already holds layer {full}; pick another --name")
        base_rec = art.layer(layer)
        if space.width != base_rec.units:
            raise ScopeError(f"the space reads {space.width} channels, but layer {layer} has {base_rec.units}")
        model = art.model
    space.quality = q
    params = {"layer": layer, "space": space.name, "method": space.method, "k": space.k, "seed": int(seed),
              "from": os.path.basename(from_file) if from_file else None, "nonlinearity": space.nonlinearity,
              "k_active": space.k_active}
    with ArtifactWriter(path, model, "decompose", params) as w:
        w.ensure_layer(space_record(base_rec, full, space.k))
        w.put(full, "space", space)
        w.add_timing("fit", float(q.get("fit_seconds", 0.0)))
    summary = {"output": path, "layer": full, "base": layer, "method": space.method, "k": space.k,
               "nonlinearity": space.nonlinearity, "k_active": space.k_active, "note": space.note,
               "quality": {key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in q.items()},
               "seconds": round(time.perf_counter() - t0, 3), "collected": None}
    if data is not None:
        summary["collected"] = collect_space(loaded, path, full, data, labels, groups, device, quiet)
    return summary


def _check_collect_inputs(art, data: str, labels: str | None, groups: str | None) -> None:
    """Refuse a --data run that would drop the artifact's labels or source groups (collect rewrites the
    image table), before anything is fitted."""
    source = open_source(data, labels=labels, groups=groups)
    table = art.dataset
    if table is not None and table.class_names and not source.class_names:
        raise ScopeError(f"{os.path.basename(art.path)} has labelled images; pass --labels too (collecting without "
                         "them would drop the labels)")
    if table is not None and table.source_names and not source.source_names:
        raise ScopeError(f"{os.path.basename(art.path)} has source groups; pass --groups too")


def _last_collect(art) -> dict:
    for run in reversed(art.provenance):
        if isinstance(run, dict) and run.get("command") == "collect" and isinstance(run.get("params"), dict):
            return run["params"]
    return {}


def rebuild_model(art, weights: str | None = None):
    """The artifact's model rebuilt from its record (spec, weights, preprocessing), checked by fingerprint."""
    model = dict(art.model)
    tries = [weights] if weights else list(dict.fromkeys([model.get("weights") or "DEFAULT", "DEFAULT"]))
    loaded, why = None, ""
    for w in tries:
        try:
            cand = resolve_model(model.get("spec", ""), weights=w)
        except ScopeError as exc:
            why = str(exc)
            continue
        if cand.fingerprint == model.get("fingerprint"):
            loaded = cand
            break
        why = f"weights {w} give another model (fingerprint {cand.fingerprint[:12]}…)"
    if loaded is None:
        raise ScopeError(f"--data needs the model of {os.path.basename(art.path)} ({model.get('spec')}), and it cannot be "
                         f"rebuilt from the file's record ({why}); pass --weights, or fit without --data and run "
                         "scope collect MODEL --layer LAYER@SPACE -o FILE")
    spec_from_dict(loaded.preprocess, model.get("preprocess") or {})
    return loaded


def collect_space(loaded, path: str, layer: str, data: str, labels: str | None, groups: str | None, device: str,
                  quiet: bool) -> dict:
    """Collect the new space's examples into `path` with the artifact's last collect settings."""
    with open_artifact(path) as art:
        last = _last_collect(art)
    settings = CollectSettings(**{k: last[k] for k in COLLECT_KEYS if k in last}, device=device)
    source = open_source(data, labels=labels, groups=groups)
    return run_collect(loaded, source, [layer], settings, output=path, quiet=quiet)
