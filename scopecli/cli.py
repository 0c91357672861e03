"""The `scope` command line: parse arguments, call the library, print. Nothing else lives here."""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand

from scopecli.core.version import __version__
from scopecli.core.errors import ScopeError

app = typer.Typer(
    name="scope",
    help="OpenAI Microscope as a command-line tool and a file: feature visualizations and dataset examples "
    "for any PyTorch vision model, in one shareable HDF5 artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _out() -> Console:
    return Console(file=sys.stdout, soft_wrap=True)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# Options shared by every command that loads a model.
WeightsOpt = typer.Option("DEFAULT", "--weights", "-w", help="DEFAULT, a torchvision weights name (IMAGENET1K_V1) or timm/open_clip pretrained tag (tf_in1k, openai; from the local cache only), random, or a PATH to a state dict.")
MeanOpt = typer.Option(None, "--mean", help="Override normalization mean, e.g. 0.5,0.5,0.5.")
StdOpt = typer.Option(None, "--std", help="Override normalization std, e.g. 0.5,0.5,0.5.")
InputSizeOpt = typer.Option(None, "--input-size", help="Override the model's input size (center-crop size, 16 or more: 28-32 for MNIST/CIFAR-like models).")
InChannelsOpt = typer.Option(None, "--in-channels", help="Input channels (default: read off the model's first layer): 1 grayscale, 4 RGB+NIR, 5 cell painting, ...")
BitDepthOpt = typer.Option(None, "--bit-depth", help="8 or 16: the depth pictures are stored and read at (16 for 16-bit microscopy/satellite data).")
ValueRangeOpt = typer.Option(None, "--value-range", help="LOW,HIGH: raw sample values that map to 0 and 1 (e.g. 0,4095 for 12-bit data; default: the data type's full range).")
ChannelNamesOpt = typer.Option(None, "--channel-names", help="Comma-separated channel names, e.g. DAPI,GFP,RFP,Cy5,BF (recorded in the artifact).")
DisplayChannelsOpt = typer.Option(None, "--display-channels", help="Channels shown as red,green,blue in pictures: indices or names, '-' for none (e.g. 3,1,0).")
ShowChannelsOpt = typer.Option(None, "--display-channels", help="Channels shown as red,green,blue (indices or the file's channel names, '-' for none) instead of the file's recorded mapping.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output on stdout.")


def load_model(model: str, weights: str, mean: Optional[str], std: Optional[str], input_size: Optional[int],
               inputs=None, out: Optional[str] = None):
    """Resolve the model for a command (the one place the CLI touches models); `inputs`: the input-spec options
    (when none is given, an existing `out` artifact's recorded spec is used)."""
    from scopecli.jobs.bind import recorded_inputs
    from scopecli.model import resolve_model

    if (inputs is None or not inputs.any()) and out:
        inputs = recorded_inputs(out) or inputs
    return resolve_model(model, weights=weights, mean=mean, std=std, input_size=input_size, inputs=inputs)


def _inputs(in_channels, bit_depth, value_range, channel_names, display_channels):
    from scopecli.model.inputspec import InputOptions

    return InputOptions(in_channels, bit_depth, value_range, channel_names, display_channels)


def _version_callback(value: bool):
    if value:
        sys.stdout.write(f"scope {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version."),
):
    """scope: Microscope for any PyTorch vision model."""


# The commands below are defined in the order of the work, which is the order `scope --help` lists them:
# make (render, collect, decompose), look (show), compare (diff, query), share (export); then file tools and helpers.


def _split_names(text: Optional[str]) -> Optional[List[str]]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


class _RenderCommand(TyperCommand):
    """`scope render --help` lists the registered objectives and parameterizations. They are read only when
    the help is shown, because the registries import torch and other commands must start fast."""

    def format_help(self, ctx, formatter):
        from scopecli.render.objectives import objectives_help
        from scopecli.render.param import params_help

        lists = {"objective": objectives_help(), "param": params_help()}
        for param in self.params:
            if param.name in lists and not param.help.endswith("."):  # once, if formatted twice
                param.help = f"{param.help}: {lists[param.name]}."
        return super().format_help(ctx, formatter)


@app.command("render", cls=_RenderCommand)
def render_cmd(
    model: str = typer.Argument(..., help="Model spec: resnet50, timm/inception_v4, open_clip/RN50x4, efficientnet_lite0, or package.module:factory."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Artifact to add to (default <model>.h5)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Layer name (repeatable or comma-separated); default: the default layer set."),
    units: Optional[str] = typer.Option(None, "--units", "-u", help="Units per layer: all, 0:64, 3,5,9 (default all)."),
    objective: str = typer.Option("channel", "--objective", help="What each image maximizes"),
    deepdream: bool = typer.Option(False, "--deepdream", help="One DeepDream image per layer (stored as unit -1)."),
    position: str = typer.Option("center", "--position", help="With --objective neuron: center, cls (a token layer's class token) or ROW,COL of the position grid."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimization steps (default: 64 with the settle schedule, 128 with fast, 512 with lucid)."),
    size: Optional[int] = typer.Option(None, "--size", help="Image side in pixels (default: the model's input size)."),
    param: str = typer.Option("fft", "--param", help="Image parameterization"),
    data: Optional[str] = typer.Option(None, "--data", help="Image folder whose mean spectrum MACO keeps (with --param maco)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: the schedule's, settle and fast 0.07, lucid 0.05)."),
    schedule: str = typer.Option("settle", "--schedule", help="Optimization schedule: settle (512-step quality in 64 steps), fast (the 0.2 default: 128 steps) or lucid (constant lr, full transforms: the 0.1 renders)."),
    batch: str = typer.Option("auto", "--batch", help="Images optimized together: auto (from memory) or N."),
    seed: int = typer.Option(0, "--seed", help="Run seed; every image's seed derives from it and the unit."),
    diversity: int = typer.Option(1, "--diversity", help="K different images per unit (Gram-matrix diversity penalty)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast (GPU speed)."),
    deterministic: bool = typer.Option(True, "--deterministic/--fast-kernels", help="On a GPU: deterministic kernels, so a rerun gives the same pixels (CPU renders always do); --fast-kernels lets cuDNN pick."),
    shard: Optional[str] = typer.Option(None, "--shard", help="k/n: render the k-th of n deterministic shares of the units (1-based); merge with scope pack. Under torchrun each rank takes its share itself."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run: skip images OUT already holds with the same settings."),
    checkpoint: float = typer.Option(300.0, "--checkpoint", help="Commit finished batches to OUT at most every S seconds (0: every batch), so --resume loses little."),
    weights: str = WeightsOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    input_size: Optional[int] = InputSizeOpt,
    in_channels: Optional[int] = InChannelsOpt,
    bit_depth: Optional[int] = BitDepthOpt,
    value_range: Optional[str] = ValueRangeOpt,
    channel_names: Optional[str] = ChannelNamesOpt,
    display_channels: Optional[str] = DisplayChannelsOpt,
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Feature visualizations: optimize images that drive units, stored with their evidence in the artifact."""
    from scopecli.render import RenderSettings
    from scopecli.jobs.render import plan_render, render_job

    if batch != "auto":
        try:
            batch_n = int(batch)
        except ValueError:
            raise ScopeError(f"--batch must be 'auto' or a positive integer, got {batch}") from None
    from scopecli.render.schedule import DEFAULT_STEPS

    if steps is None:
        steps = DEFAULT_STEPS.get(schedule, DEFAULT_STEPS["settle"])
    settings = RenderSettings(steps=steps, size=16 if size is None else size, param=param, lr=lr, batch=batch if batch == "auto" else batch_n,
                              seed=seed, device=device, amp=amp, schedule=schedule, deterministic=deterministic)
    settings.check()
    loaded = load_model(model, weights, mean, std, input_size, _inputs(in_channels, bit_depth, value_range, channel_names, display_channels), out)
    settings.size = loaded.preprocess.crop if size is None else size
    plan = plan_render(loaded, _split_names(",".join(layer)) if layer else None, units,
                       "deepdream" if deepdream else objective, diversity, settings, data, position,
                       spaces_from=out or f"{loaded.name}.h5")
    err = Console(file=sys.stderr, soft_wrap=True)
    summary = render_job(loaded, plan, out, shard, resume=resume, checkpoint_s=checkpoint, quiet=quiet or json_out,
                         log=lambda message: err.print(message, markup=False))
    if summary is None:  # a torchrun rank other than the leader
        return
    if json_out:
        _print_json(summary)
        return
    for why in summary["skipped"]:
        err.print(f"skipped {why}", markup=False)
    if "ranks" in summary:
        _out().print(f"wrote {summary['output']}: {summary['rendered']} of {summary['requested']} images from "
                     f"{summary['ranks']} ranks", markup=False)
        return
    if summary.get("already_done"):
        err.print(f"resumed: {summary['already_done']} images were already in {summary['output']}", markup=False)
    _out().print(f"wrote {summary['output']}: {summary['rendered']} of {summary['requested']} images, "
                 f"{summary['units_per_minute']} units/min on {summary['device']} (batch {summary['batch']}), "
                 f"{summary['seconds']:.1f} s", markup=False)


@app.command("caricature")
def caricature_cmd(
    model: str = typer.Argument(..., help="Model spec: resnet50, timm/inception_v4, open_clip/RN50x4, efficientnet_lite0, or package.module:factory."),
    image: List[str] = typer.Option(..., "--image", "-i", help="A photo to caricature (repeatable)."),
    layer: List[str] = typer.Option(..., "--layer", "-l", help="Layer name (repeatable or comma-separated)."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Artifact to add to (default <model>.h5)."),
    steps: int = typer.Option(256, "--steps", help="Optimization steps."),
    power: float = typer.Option(1.0, "--power", help="Cosine power p of the objective dot(a, a_photo) * cos^p (0: plain dot product)."),
    param: str = typer.Option("fft", "--param", help="Image parameterization: fft or pixel (it starts from the photo)."),
    lr: float = typer.Option(0.05, "--lr", help="Adam learning rate."),
    batch: int = typer.Option(8, "--batch", help="(layer, photo) images optimized together."),
    seed: int = typer.Option(0, "--seed", help="Run seed of the transforms."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    weights: str = WeightsOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    input_size: Optional[int] = InputSizeOpt,
    in_channels: Optional[int] = InChannelsOpt,
    bit_depth: Optional[int] = BitDepthOpt,
    value_range: Optional[str] = ValueRangeOpt,
    channel_names: Optional[str] = ChannelNamesOpt,
    display_channels: Optional[str] = DisplayChannelsOpt,
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Caricatures: photos re-optimized so that a layer's response to them is exaggerated (Lucid's recipe)."""
    from scopecli.views.caricature import CaricatureSettings, load_photos, run_caricature

    settings = CaricatureSettings(steps=steps, lr=lr, power=power, param=param, seed=seed, batch=batch, device=device)
    settings.check()
    loaded = load_model(model, weights, mean, std, input_size, _inputs(in_channels, bit_depth, value_range, channel_names, display_channels), out)
    load_photos(image, loaded.preprocess)  # a photo the model cannot read fails before any work
    summary = run_caricature(loaded, _split_names(",".join(layer)), image, settings, out, quiet=quiet or json_out)
    if json_out:
        _print_json(summary)
        return
    for row in summary["images"]:
        _out().print(f"{row['layer']}  {row['photo']}: cosine to the photo {row['cosine']:.3f}, magnitude "
                     f"x{row['magnitude_ratio']:.2f}", markup=False)
    _out().print(f"wrote {summary['output']}: {len(summary['images'])} caricatures, {summary['seconds']:.1f} s on "
                 f"{summary['device']}", markup=False)


@app.command("collect")
def collect_cmd(
    model: str = typer.Argument(..., help="Model spec: resnet50, timm/inception_v4, open_clip/RN50x4, efficientnet_lite0, or package.module:factory."),
    data: str = typer.Option(..., "--data", help="Image folder (ImageFolder tree or flat, recursive) or a text file of image paths."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Artifact to add to (default <model>.h5; shards <model>.shard-K-of-N.h5)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Layer name (repeatable or comma-separated); default: the default layer set."),
    top_k: int = typer.Option(16, "--top-k", help="Top examples per unit."),
    bottom_k: int = typer.Option(8, "--bottom-k", help="Bottom (most negative) examples per unit."),
    patch_size: int = typer.Option(96, "--patch-size", help="Largest side of a stored patch, in pixels (a smaller receptive field keeps its native size)."),
    probe: int = typer.Option(500, "--probe", help="Store spatial-mean activations on the first N images (for scope diff)."),
    batch: int = typer.Option(64, "--batch", help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode workers (default: half the CPU cores)."),
    loader: str = typer.Option("threads", "--loader", help="Decode in threads of this process (threads) or in worker processes (processes: for decoders that hold the GIL, on many cores)."),
    decode: str = typer.Option("auto", "--decode", help="Where JPEGs are decoded in pass 1: device (the model's GPU, in batches), cpu (Pillow), or auto (the GPU when it can)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N images (sorted by path)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="TSV/CSV mapping file -> label (e.g. the sample folder's labels.tsv)."),
    groups: Optional[str] = typer.Option(None, "--groups", help="TSV/CSV mapping file -> source group: crops and mirrors of one photo count as one source."),
    per_source: Optional[int] = typer.Option(None, "--per-source", help="At most N examples of one source group per unit (default 1 with --groups; 0: no limit)."),
    sample: int = typer.Option(0, "--sample", help="Keep a seeded uniform sample of N position vectors per layer (float16), what `scope decompose` fits unit spaces on."),
    seed: int = typer.Option(0, "--seed", help="Seed of the activation sample."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    bf16: bool = typer.Option(False, "--bf16", help="Run the model under bfloat16 autocast (GPU speed; stats stay float32)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="k/n: process the k-th of n deterministic parts (1-based); merge with scope pack."),
    weights: str = WeightsOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    input_size: Optional[int] = InputSizeOpt,
    in_channels: Optional[int] = InChannelsOpt,
    bit_depth: Optional[int] = BitDepthOpt,
    value_range: Optional[str] = ValueRangeOpt,
    channel_names: Optional[str] = ChannelNamesOpt,
    display_channels: Optional[str] = DisplayChannelsOpt,
    lossless: bool = typer.Option(False, "--lossless", help="Store patches as PNG instead of JPEG q90."),
    channel_axis: Optional[int] = typer.Option(None, "--channel-axis", help=".npy / multi-page TIFF data: 0 for C x H x W, -1 for H x W x C (default: the axis whose length is the model's channel count)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its saved pass-1 state (OUT.collect-state)."),
    checkpoint: float = typer.Option(300.0, "--checkpoint", help="Save the pass-1 state at most every S seconds (0: every batch), so --resume loses little."),
    effects: bool = typer.Option(False, "--effects", help="Then store what each unit votes for in the output (gradient x activation per class) and the ablation check of each class's top units, as scope effects does."),
    circuits: Optional[str] = typer.Option(None, "--circuits", help="Then store each unit's strongest inputs from layer FROM ('prev': each layer's previous default layer), as scope circuits does."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Dataset examples: top/bottom receptive-field patches, statistics and probe activations per unit."""
    from scopecli.collect import CollectSettings, open_source
    from scopecli.jobs.collect import run_collect

    settings = CollectSettings(top_k=top_k, bottom_k=bottom_k, patch_size=patch_size, probe=probe, batch=batch,
                               workers=workers, loader=loader, decode=decode, limit=limit, device=device, bf16=bf16,
                               lossless=lossless, per_source=per_source, sample=sample, seed=seed,
                               channel_axis=channel_axis)
    settings.check()
    source = open_source(data, labels=labels, groups=groups)
    loaded = load_model(model, weights, mean, std, input_size, _inputs(in_channels, bit_depth, value_range, channel_names, display_channels), out)
    summary = run_collect(loaded, source, _split_names(",".join(layer)) if layer else None, settings, out, shard,
                          resume=resume, checkpoint_s=checkpoint, quiet=quiet or json_out, circuits=circuits,
                          effects=effects)
    if summary is None:  # a torchrun rank other than the leader
        return
    if json_out:
        _print_json(summary)
        return
    err = Console(file=sys.stderr, soft_wrap=True)
    notes = summary["notes"]
    skips = [m for m in notes if m.startswith("skipped ")]
    for m in skips[:10]:
        err.print(m, markup=False)
    if len(skips) > 10:
        err.print(f"... and {len(skips) - 10} more skipped", markup=False)
    for m in notes:
        if not m.startswith("skipped "):
            err.print(f"note: {m}", markup=False)
    if "ranks" in summary:
        _out().print(f"wrote {summary['output']}: {summary['packed']['layers']} layers, {summary['packed']['images']} "
                     f"images from {summary['ranks']} ranks; rank 1 pass 1 {summary['images_per_s']} img/s on "
                     f"{summary['device']}", markup=False)
        return
    _out().print(f"wrote {summary['output']}: {len(summary['layers'])} layers, {summary['units']} units, "
                 f"{summary['images']} images ({summary['skipped']} skipped), {summary['patches']} patches; pass 1 "
                 f"{summary['images_per_s']} img/s on {summary['device']}, {summary['seconds']:.1f} s", markup=False)


@app.command("decompose")
def decompose_cmd(
    file: str = typer.Argument(..., metavar="FILE", help="Artifact whose layer has an activation sample (collect --sample N)."),
    layer: str = typer.Option(..., "--layer", "-l", help="The layer to fit the space on."),
    method: Optional[str] = typer.Option(None, "--method", help="pca (centred), nmf (non-negative; --shift for signed layers) or sae (TopK sparse autoencoder)."),
    k: Optional[int] = typer.Option(None, "--k", help="Directions / latents (sae default: 4x the channels)."),
    name: Optional[str] = typer.Option(None, "--name", help="Space name (default METHODK, e.g. pca32): units are LAYER@NAME:i."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fit (NMF init, SAE init and batches)."),
    k_active: Optional[int] = typer.Option(None, "--k-active", help="sae / imported topk: latents kept per position (sae default: channels / 8)."),
    shift: bool = typer.Option(False, "--shift", help="nmf on a layer with negative values: subtract each channel's sample minimum first (stored as pre_bias)."),
    from_file: Optional[str] = typer.Option(None, "--from", help="Import a dictionary: .safetensors / .npz (W_enc, b_enc, W_dec, b_dec) or .npy (directions); pickles are refused."),
    nonlinearity: str = typer.Option("relu", "--nonlinearity", help="With --from: none, relu or topk (with --k-active)."),
    subtract_b_dec: bool = typer.Option(True, "--subtract-b-dec/--no-subtract-b-dec", help="With --from: the encoder reads x - b_dec (SAELens) or x itself (saev)."),
    data: Optional[str] = typer.Option(None, "--data", help="Then collect the space's examples from this image folder (the artifact's images)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="With --data: the labels file the artifact was collected with."),
    groups: Optional[str] = typer.Option(None, "--groups", help="With --data: the source-groups file the artifact was collected with."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="With --data: the model's weights when the artifact's record cannot rebuild them (a PATH)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (NMF, SAE and --data)."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Unit spaces: fit PCA / NMF / a sparse autoencoder on a layer's activation sample, or import a
    dictionary, and store it as layer LAYER@NAME whose units every command reads."""
    from scopecli.jobs.spaces import decompose

    res = decompose(file, layer, method, k, name, seed=seed, from_file=from_file, data=data, labels=labels,
                    groups=groups, k_active=k_active, shift=shift, device=device, nonlinearity=nonlinearity,
                    subtract_b_dec=subtract_b_dec, weights=weights, quiet=quiet or json_out)
    if json_out:
        _print_json(res)
        return
    q = res["quality"]

    def num(key, pct=False):
        v = q.get(key)
        return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3g}")

    ev = f", explained variance {num('explained_variance', True)}" if q.get("explained_variance") is not None else ""
    nn = f", NNLS R² {num('r2_nnls')}" if q.get("r2_nnls") is not None else ""
    _out().print(f"wrote {res['layer']} into {res['output']}: {res['method']} k={res['k']} ({res['nonlinearity']}"
                 f"{' ' + str(res['k_active']) if res['k_active'] else ''}); held-out R² {num('r2')}{nn}{ev}, "
                 f"dead {num('dead_fraction', True)}, fit {q.get('fit_seconds', 0):.1f} s", markup=False)
    if res["collected"]:
        c = res["collected"]
        _out().print(f"collected {c['units']} units on {c['images']} images into {c['output']}", markup=False)


@app.command("circuits")
def circuits_cmd(
    file: str = typer.Argument(..., metavar="A.h5", help="Artifact with dataset examples (scope collect); the inputs are added to it."),
    data: str = typer.Option(..., "--data", help="The image folder (or list) collect read: each unit's top examples are run again."),
    from_layer: Optional[str] = typer.Option(None, "--from", help="Input layer L' (default: each layer's previous default layer)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Layers L (repeatable or comma-separated; default: every layer with examples)."),
    units: Optional[str] = typer.Option(None, "--units", "-u", help="Units of L: all, 0:64, 3,5,9 (default all)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Average over each unit's first K top examples (default: all stored)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model spec, when the recorded one cannot be built here."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights, when the recorded ones cannot be loaded (a PATH)."),
    batch: int = typer.Option(32, "--batch", help="(image, unit) rows per forward/backward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Strongest inputs (Circuits): which units of an earlier layer build each unit, by gradient x input over its top examples."""
    from scopecli.views.circuits import run_circuits

    err = Console(file=sys.stderr, soft_wrap=True)
    notes: list[str] = []
    summary = run_circuits(file, data, from_layer, _split_names(",".join(layer)) if layer else None, units, top_k,
                           model, weights, device=device, batch=batch, quiet=quiet or json_out, log=notes.append)
    if json_out:
        _print_json(summary | {"notes": notes})
        return
    for m in notes:
        err.print(f"note: {m}", markup=False)
    done = ", ".join(f"{x['layer']} <- {x['from']} ({x['units']} units)" for x in summary["layers"])
    _out().print(f"wrote strongest inputs to {summary['output']}: {done}; {summary['seconds']:.1f} s on "
                 f"{summary['device']}", markup=False)


@app.command("effects")
def effects_cmd(
    file: str = typer.Argument(..., metavar="A.h5", help="Artifact with collected layers (scope collect); the effects are added to it."),
    data: str = typer.Option(..., "--data", help="The image folder (or list) collect read: every image is run again."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Layers (repeatable or comma-separated; default: every collected layer)."),
    target: Optional[str] = typer.Option(None, "--target", help="label (the labels' class index is the model's output index; default when the images have labels) or predicted (the model's top class)."),
    output: str = typer.Option("logit", "--output", help="logit, or for a model without class logits: norm (the output's norm) or INDEX (one output)."),
    ablate: bool = typer.Option(True, "--ablate/--no-ablate", help="The causal check: each class's top units, then random units, set to their dataset mean."),
    ablate_layer: Optional[List[str]] = typer.Option(None, "--ablate-layer", help="Layers to run the check on (default: all of --layer)."),
    ablate_k: int = typer.Option(16, "--ablate-k", help="Units ablated per class (its top units by importance; the same number of random ones)."),
    draws: int = typer.Option(4, "--draws", help="Seeded draws of random units per class."),
    min_images: int = typer.Option(3, "--min-images", help="Classes with fewer images are not checked."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random draws."),
    model: Optional[str] = typer.Option(None, "--model", help="Model spec, when the recorded one cannot be built here."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights, when the recorded ones cannot be loaded (a PATH)."),
    batch: int = typer.Option(16, "--batch", help="Images per forward/backward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """What each unit does: its attribution to each class's logit (votes for / against), each class's most
    important units, and the ablation check of those units against random ones."""
    from scopecli.views.effects import run_effects

    summary = run_effects(file, data, _split_names(",".join(layer)) if layer else None, target, output, ablate,
                          _split_names(",".join(ablate_layer)) if ablate_layer else None, ablate_k, draws, seed,
                          min_images, model, weights, device=device, batch=batch, quiet=quiet or json_out)
    if json_out:
        _print_json(summary)
        return
    if summary.get("note"):
        Console(file=sys.stderr, soft_wrap=True).print(f"note: {summary['note']}", markup=False)
    for row in summary["layers"]:
        line = f"{row['layer']}: {row['classes']} classes"
        if row.get("ablation_classes"):
            line += (f"; ablating each class's top {ablate_k} units lowers its logit by {row['median_top_drop']:.3g} "
                     f"(median over {row['ablation_classes']} classes), random {ablate_k}: {row['median_random_drop']:.3g}")
        _out().print(line, markup=False)
    acc = f", accuracy {summary['accuracy']:.1%}" if "accuracy" in summary else ""
    _out().print(f"wrote effects ({summary['target']}) of {summary['images']} images to {summary['output']}{acc}; "
                 f"{summary['seconds']:.1f} s on {summary['device']}", markup=False)


@app.command("faithfulness")
def faithfulness_cmd(
    file: str = typer.Argument(..., metavar="A.h5", help="Artifact with renders and dataset examples; the evidence is added to it."),
    data: str = typer.Option(..., "--data", help="The image folder (or list) collect read: the units' top examples are run again."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Layers whose renders are checked (default: every layer with renders and examples)."),
    k: int = typer.Option(8, "--k", help="Top examples per unit whose path a render is compared with."),
    seed: int = typer.Option(0, "--seed", help="Seed of each render's random baseline unit."),
    model: Optional[str] = typer.Option(None, "--model", help="Model spec, when the recorded one cannot be built here."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights, when the recorded ones cannot be loaded (a PATH)."),
    batch: int = typer.Option(32, "--batch", help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Whether each render drives its unit the way photos do: path similarity (rank correlation of the earlier
    layers' activations at the driving position) against its unit's top examples, next to a random unit's."""
    from scopecli.model.reopen import model_for_artifact
    from scopecli.artifact import open_artifact
    from scopecli.views.faithfulness import run_path_similarity

    if k < 1 or batch < 1:
        raise ScopeError("--k and --batch must be >= 1")
    with open_artifact(file) as art:
        loaded = model_for_artifact(art.model, model, weights)
    summary = run_path_similarity(loaded, file, data, _split_names(",".join(layer)) if layer else None, k=k, seed=seed,
                                  device=device, quiet=quiet or json_out, batch=batch)
    if json_out:
        _print_json(summary)
        return
    for row in summary["layers"]:
        if row["measured"]:
            _out().print(f"{row['layer']}: {row['measured']} of {row['renders']} renders, median path similarity "
                         f"{row['median_similarity']:.3f} (random unit {row['median_baseline']:.3f}), {row['flagged']} "
                         "flagged", markup=False)
        else:
            _out().print(f"{row['layer']}: no render could be measured", markup=False)
    _out().print(f"wrote path similarity to {summary['output']}; {summary['seconds']:.1f} s on {summary['device']}",
                 markup=False)


@app.command("atlas")
def atlas_cmd(
    file: str = typer.Argument(..., metavar="A.h5", help="Artifact with an activation sample of the layer (scope collect --sample N); the atlas is added to it."),
    layer: str = typer.Option(..., "--layer", "-l", help="The layer to map."),
    grid: int = typer.Option(20, "--grid", help="Cells per side of the atlas grid."),
    seed: int = typer.Option(0, "--seed", help="Seed of the layout (UMAP) and of the renders."),
    steps: int = typer.Option(128, "--steps", help="Optimization steps per cell."),
    size: int = typer.Option(96, "--size", help="Side in pixels of each cell's render."),
    layout: str = typer.Option("auto", "--layout", help="auto (UMAP when umap-learn is installed, else PCA), umap or pca."),
    power: float = typer.Option(1.0, "--power", help="Cosine power of the direction objective dot(a, d) * cos^p."),
    batch: int = typer.Option(32, "--batch", help="Cells rendered together."),
    model: Optional[str] = typer.Option(None, "--model", help="Model spec, when the recorded one cannot be built here."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Weights, when the recorded ones cannot be loaded (a PATH)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Activation atlas: the layer's activation sample laid out in 2-D (UMAP), gridded, every cell's mean direction rendered."""
    from scopecli.views.atlas import run_atlas

    summary = run_atlas(file, layer, grid=grid, seed=seed, steps=steps, size=size, layout=layout, power=power,
                        batch=batch, model=model, weights=weights, device=device, quiet=quiet or json_out)
    if json_out:
        _print_json(summary)
        return
    if summary["note"]:
        Console(file=sys.stderr, soft_wrap=True).print(f"note: {summary['note']}", markup=False)
    _out().print(f"wrote the atlas of {summary['layer']} to {summary['output']}: {summary['cells']} of "
                 f"{summary['grid']}x{summary['grid']} cells from {summary['vectors']} sample vectors ({summary['layout']} "
                 f"layout {summary['layout_s']:.1f} s), rendered in {summary['render_s']:.1f} s on {summary['device']}",
                 markup=False)


@app.command("show")
def show_cmd(
    file: str = typer.Argument(..., metavar="FILE", help="Artifact."),
    unit: str = typer.Argument(..., metavar="LAYER:UNIT", help="Unit address, e.g. layer4.2:117; or a LAYER for its caricatures and atlas."),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="Write the unit card as a PNG (a name ending in .png)."),
    display_channels: Optional[str] = ShowChannelsOpt,
    json_out: bool = JsonOpt,
):
    """One unit: statistics, renders and examples; -o writes its card as PNG. A layer: its caricatures and atlas."""
    from scopecli.compare.report import layer_summary, unit_summary
    from scopecli.compare.show import (
        check_card_output, layer_json, load_layer, load_unit, unit_json, write_card, write_layer_card,
    )

    if out:
        check_card_output(out)
    if ":" not in unit:  # layer names never hold a colon: a whole layer
        load, write, as_json, summary = load_layer, write_layer_card, layer_json, layer_summary
    else:
        load, write, as_json, summary = load_unit, write_card, unit_json, unit_summary
    info = load(file, unit, pixels=bool(out), display=display_channels)
    if out:
        write(info, out)
    if json_out:
        _print_json(as_json(info))
        return
    _out().print(summary(info))
    if out:
        _out().print(f"wrote card {out}")


@app.command("diff")
def diff_cmd(
    file_a: str = typer.Argument(..., metavar="A.h5", help="First artifact (rows)."),
    file_b: str = typer.Argument(..., metavar="B.h5", help="Second artifact (columns); may be A itself."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers of A (default: all with probe activations)."),
    layers_b: Optional[str] = typer.Option(None, "--layers-b", help="Layers of B (default: the --layers names if B has them all, else all)."),
    pair: Optional[List[str]] = typer.Option(None, "--pair", help="Unit-match this layer pair, LAYER_A=LAYER_B (repeatable; default: each A layer with its best B layer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the stimulus-permutation controls."),
    permutations: int = typer.Option(20, "--permutations", help="Shuffles for the CKA floor (max over them)."),
    max_images: int = typer.Option(1000, "--max-images", help="CKA on at most this many shared images (seeded subsample; memory grows with its square)."),
    top: int = typer.Option(5, "--top", help="Matched pairs / changed units listed per layer."),
    png: Optional[str] = typer.Option(None, "--png", help="Write a labelled CKA heatmap PNG."),
    save: Optional[str] = typer.Option(None, "--save", help="Write the diff as a small HDF5 file (format scope.diff)."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Compare two artifacts from their files: layer CKA with permutation floors, unit matching, unit changes."""
    from scopecli.compare.diff import parse_pair, run_diff
    from scopecli.core.fileio import check_output_file

    pairs = [parse_pair(p) for p in pair] if pair else None
    for path, example in ((png, "diff.png"), (save, "diff.h5")):
        if path:
            check_output_file(path, example)
    res = run_diff(file_a, file_b, _split_names(layers), _split_names(layers_b), pairs, seed=seed,
                   permutations=permutations, quiet=quiet or json_out, max_images=max_images)
    if png:
        from scopecli.compare.drawing import save_png, cka_heatmap

        save_png(cka_heatmap(res), png)
    if save:
        res.save(save)
    if json_out:
        _print_json(res.to_json(top=top))
        return
    from scopecli.compare.report import diff_summary

    _out().print(diff_summary(res, top=top))
    for what, path in (("heatmap", png), ("diff file", save)):
        if path:
            _out().print(f"wrote {what} {path}")


@app.command("query")
def query_cmd(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Artifacts to search."),
    label: Optional[str] = typer.Option(None, "--label", help="Units whose top examples concentrate on classes whose name contains TEXT."),
    like: Optional[str] = typer.Option(None, "--like", help="Units whose probe activations correlate most with FILE:layer:unit."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Only these layers (comma-separated)."),
    top: int = typer.Option(20, "--top", help="How many units to list."),
    min_max: Optional[float] = typer.Option(None, "--min-max", help="Only units whose dataset max activation is >= X."),
    min_frac_positive: Optional[float] = typer.Option(None, "--min-frac-positive", help="Only units positive on at least this fraction of positions."),
    sort: str = typer.Option("score", "--sort", help="score | max | mean | std | frac-positive | purity | strength | lift (descending)."),
    class_: Optional[str] = typer.Option(None, "--class", help="A class's most important units per layer (share of its positive attribution) and the ablation check (files with effects: scope effects); a class name or output index."),
    json_out: bool = JsonOpt,
):
    """Find units across artifacts by class label, by likeness to a unit, or by statistics; --class: a class's top units."""
    from scopecli.compare.query import run_class_query, run_query

    if class_ is not None:
        if label is not None or like is not None:
            raise ScopeError("use one of --class, --label and --like")
        reports = run_class_query(files, class_, layers=_split_names(layer), top=top)
        if json_out:
            _print_json(reports)
            return
        from scopecli.compare.report import class_summary

        _out().print(class_summary(reports))
        return
    hits = run_query(files, label=label, like=like, layers=_split_names(layer), top=top, min_max=min_max,
                     min_frac_positive=min_frac_positive, sort=sort)
    if json_out:
        _print_json([h.to_json() for h in hits])
        return
    from scopecli.compare.report import query_table

    what = (f"label '{label}' (score = lift of its top examples over the class's base rate, shrunk for few "
            "examples)" if label is not None else
            f"like {like} (score = correlation over shared probe images)" if like is not None else
            "statistics (score = max activation)")
    _out().print(query_table(hits, f"Units by {what}, sorted by {sort}"))
    if not hits:
        _out().print("no unit matched")


@app.command("export")
def export_cmd(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Artifacts to show in the gallery."),
    out: str = typer.Option(..., "-o", "--out", help="Site folder (new, empty, or a previous scope export, which is replaced)."),
    diff: Optional[List[str]] = typer.Option(None, "--diff", help="A `scope diff --save` file: links matched units across models (repeatable)."),
    per_page: int = typer.Option(128, "--per-page", help="Units per page of a layer grid."),
    display_channels: Optional[str] = ShowChannelsOpt,
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Write an offline HTML gallery (Microscope-like): models, layer grids, unit pages; open SITE/index.html."""
    import functools

    from scopecli.export import export_site
    from scopecli.core.progress import progress

    res = export_site(files, out, diff_paths=diff or (), per_page=per_page, display=display_channels,
                      progress=None if (quiet or json_out) else functools.partial(progress, unit="units"))
    if json_out:
        _print_json(res)
        return
    _out().print(f"wrote {res['pages']} pages and {res['images']} images for {res['units']} units "
                 f"({res['models']} models, {res['layers']} layers) to {res['site']}")
    _out().print(f"open {res['url']}")


@app.command("serve")
def serve_cmd(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Artifacts to browse."),
    diff: Optional[List[str]] = typer.Option(None, "--diff", help="A `scope diff --save` file: comparison page and unit links (repeatable)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(0, "--port", help="Port (0: a free one)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the index in the web browser."),
    per_page: int = typer.Option(128, "--per-page", help="Units per page of a layer grid."),
    verbose: bool = typer.Option(False, "--verbose", help="Log every request to stderr."),
    display_channels: Optional[str] = ShowChannelsOpt,
    json_out: bool = JsonOpt,
):
    """Browse artifacts in a web browser, pages built from the files on request (read-only; Ctrl-C stops)."""
    from scopecli.serve import Catalog, Server, serve
    from scopecli.serve.http import is_local

    if not 0 <= port <= 65535:
        raise ScopeError(f"--port must be 0..65535, got {port}")
    catalog = Catalog(files, diff or (), per_page=per_page, display=display_channels)
    try:
        server = Server(catalog, host, port, verbose=verbose)
    except OSError as exc:
        catalog.close()
        raise ScopeError(f"cannot listen on {host}:{port} ({exc.strerror or exc})")
    if not is_local(host):
        sys.stderr.write(f"warning: listening on {host}: anyone who can reach this machine can read these artifacts\n")
    if json_out:
        print(json.dumps({"url": server.url, "artifacts": catalog.paths}), flush=True)
    else:
        print(f"serving {len(catalog.paths)} artifact(s) at {server.url}  (Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    serve(server)
    if not json_out:
        print("stopped", flush=True)


@app.command("pack")
def pack_cmd(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="Artifacts of one model to merge (e.g. collect shards)."),
    out: str = typer.Option(..., "-o", "--out", help="Output artifact."),
    prefer: Optional[str] = typer.Option(None, "--prefer", help="'last': on conflicting units keep the later input's version."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists and is not an input."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """Merge artifacts of one model: union of layers/units; shards merge exactly (top-k, stats, probes)."""
    from scopecli.artifact.pack import pack

    res = pack(files, out, prefer=prefer, force=force, quiet=quiet or json_out)
    if json_out:
        _print_json(res)
        return
    from scopecli.artifact.report import human_bytes

    _out().print(f"wrote {res['output']}: {len(res['inputs'])} inputs, {res['layers']} layers, "
                 f"{res['images']} images, {human_bytes(res['size_bytes'])}")


@app.command("info")
def info_cmd(
    file: str = typer.Argument(..., metavar="FILE", help="Artifact or diff file."),
    json_out: bool = JsonOpt,
):
    """What a scope file holds: an artifact's model, format, layers with rendered/collected counts, dataset,
    size; a diff file's models and layer pairs."""
    from scopecli.artifact.formats import describe

    fmt, info = describe(file)
    if json_out:
        _print_json(info)
        return
    _out().print(fmt.report(info))


@app.command("validate")
def validate_cmd(
    file: str = typer.Argument(..., metavar="FILE", help="Artifact."),
    quick: bool = typer.Option(False, "--quick", help="Structure and index tables only (skip checksums and image decoding)."),
    json_out: bool = JsonOpt,
):
    """Check an artifact against the format spec, every checksum and every image; exit 1 listing problems."""
    from scopecli.artifact.validate import validate

    problems = validate(file, quick=quick)
    if json_out:
        _print_json({"file": file, "valid": not problems, "quick": quick, "problems": problems})
    elif problems:
        for p in problems:
            sys.stdout.write(f"problem: {p}\n")
    else:
        sys.stdout.write(f"valid{' (quick check)' if quick else ''}: {file}\n")
    if problems:
        from scopecli.core.errors import ValidationFailed

        raise ValidationFailed(f"{file}: {len(problems)} problem{'s' if len(problems) != 1 else ''} found")


@app.command("layers")
def layers_cmd(
    model: str = typer.Argument(..., help="Model spec: resnet50, timm/inception_v4, open_clip/RN50x4, efficientnet_lite0, or package.module:factory."),
    weights: str = WeightsOpt,
    mean: Optional[str] = MeanOpt,
    std: Optional[str] = StdOpt,
    input_size: Optional[int] = InputSizeOpt,
    in_channels: Optional[int] = InChannelsOpt,
    bit_depth: Optional[int] = BitDepthOpt,
    value_range: Optional[str] = ValueRangeOpt,
    channel_names: Optional[str] = ChannelNamesOpt,
    display_channels: Optional[str] = DisplayChannelsOpt,
    default_only: bool = typer.Option(False, "--default", help="Only the default layer set."),
    measure: bool = typer.Option(False, "--measure", help="Measure every field the tracer cannot follow (windowed attention), not only the default layers' (slower)."),
    json_out: bool = JsonOpt,
):
    """Addressable layers: units, layout (channels first/last, tokens, vector), position grid, receptive field;
    * marks the default set."""
    from scopecli.model.layers import layer_table
    from scopecli.model.report import layers_table

    loaded = load_model(model, weights, mean, std, input_size, _inputs(in_channels, bit_depth, value_range, channel_names, display_channels))
    table = layer_table(loaded.module, loaded.preprocess.crop, measure="all" if measure else None)
    if default_only:
        table = [info for info in table if info.default]
    if json_out:
        _print_json(
            {
                "model": loaded.info(),
                "input_size": loaded.preprocess.crop,
                "layers": [info.to_dict() for info in table],
            }
        )
        return
    _out().print(layers_table(f"{loaded.name} ({loaded.weights}) at {loaded.preprocess.crop}px — * default layer set",
                              table))


@app.command("models")
def models_cmd(json_out: bool = JsonOpt):
    """List the model families and specs scope resolves, and whether their optional extras are installed."""
    from scopecli.model import catalogue

    rows = catalogue()
    if json_out:
        _print_json(rows)
        return
    table = Table(title="Model families and specs (available: its extra is installed)")
    for col in ("name", "source", "weights", "available"):
        table.add_column(col)
    from rich.markup import escape

    for row in rows:  # escaped: '[timm] extra' is text, not rich markup
        table.add_row(escape(row["name"]), escape(row["source"]), escape(row["weights"]),
                      "yes" if row["available"] else "no")
    _out().print(table)


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("scope-demo", "-o", "--out", help="Folder for demo.h5, the photos and the gallery."),
    steps: int = typer.Option(192, "--steps", help="Optimization steps per feature visualization."),
    size: int = typer.Option(128, "--size", help="Feature visualization size in pixels."),
    quiet: bool = QuietOpt,
    json_out: bool = JsonOpt,
):
    """End to end, offline: pretrained EfficientNet-Lite0, open photos, examples, renders, HTML gallery."""
    from scopecli.demo import run_demo

    summary = run_demo(out, steps=steps, size=size, quiet=quiet or json_out)
    if json_out:
        _print_json(summary)
        return
    seconds = summary["seconds"]
    _out().print(
        f"demo done in {seconds['total']:.0f} s (collect {seconds['collect']:.0f} s, render {seconds['render']:.0f} s, "
        f"export {seconds['export']:.0f} s): {summary['rendered']} feature visualizations and examples of "
        f"{summary['collected_units']} units on {summary['images']} photos",
        markup=False,
    )
    _out().print(f"artifact: {summary['artifact']}", markup=False)
    _out().print(f"open the gallery: {summary['site']}", markup=False)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: every failure is one line on stderr and a non-zero exit code, never a traceback."""
    err = sys.stderr
    try:
        rc = app(args=argv, prog_name="scope", standalone_mode=False)
        if rc == 130:  # typer turns Ctrl-C into a returned exit code 130 when not standalone
            raise KeyboardInterrupt
    except ScopeError as exc:
        err.write(f"error: {_one_line(exc)}\n")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except (typer.Abort, KeyboardInterrupt):
        err.write("error: interrupted; the artifact on disk is unchanged\n")
        sys.exit(130)
    except MemoryError:
        err.write("error: out of memory; try a smaller --batch\n")
        sys.exit(1)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors from the parser
            message = _one_line(exc.format_message())
            if message:  # an empty message is the parser's own help screen for a bare command
                err.write(f"error: {message}\n")
            sys.exit(2)
        # a bug in scope: still one line, with what to report
        err.write(f"error: internal error {type(exc).__name__}: {_one_line(exc)[:300]} (please report this)\n")
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
