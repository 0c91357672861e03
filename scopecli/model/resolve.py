"""One resolver from a model spec string to a ready model, used by every command.

It asks the registered families (model/families/) which one claims the spec, builds the module with
the requested weights, applies the user's preprocessing overrides and freezes the model. `scope models`
lists what the families report.
"""

from __future__ import annotations

from scopecli.core.errors import ScopeError
from scopecli.core.fileio import did_you_mean
from scopecli.model.families import FAMILIES, family_for
from scopecli.model.inputspec import MIN_INPUT_SIZE, InputOptions, apply_input_options, declare_channels, detect_channels
from scopecli.model.loaded import LoadedModel


def catalogue() -> list[dict]:
    """What `scope models` lists: every family's names with their weights and availability."""
    return [row for family in FAMILIES for row in family.rows()]


def resolve_model(
    spec: str,
    weights: str | None = "DEFAULT",
    mean=None,
    std=None,
    input_size: int | None = None,
    inputs: InputOptions | None = None,
) -> LoadedModel:
    """Resolve a spec and weights to a LoadedModel (eval mode, frozen), with its preprocessing and input spec
    (channel count traced from the model's first layer; `inputs`: the user's --in-channels, --bit-depth, ...)."""
    spec = str(spec).strip()
    weights = "DEFAULT" if weights in (None, "") else str(weights)
    found = family_for(spec)
    if found is None:
        known = [name for family in FAMILIES for name in family.names()]
        # a library's model named without its family prefix (inception_v4, RN50x4): point at timm/..., open_clip/...
        prefixed = [name for name in known if "/" in name and name.split("/", 1)[1].lower() == spec.lower()]
        hint = f"; did you mean {', '.join(prefixed)}?" if prefixed else did_you_mean(
            spec.lower(), known, listing="`scope models` lists them")
        raise ScopeError(f"unknown model '{spec}'" + hint)
    family, spec = found
    built = family.build(spec, weights)
    preprocess = built.preprocess if built.preprocess is not None else family.preprocess(spec)
    if input_size is not None:
        if not MIN_INPUT_SIZE <= int(input_size) <= 8192:
            raise ScopeError(f"--input-size must be {MIN_INPUT_SIZE}..8192, got {input_size}")
        preprocess.crop = int(input_size)
        preprocess.resize = int(round(int(input_size) * 256 / 224))
    module = built.module
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    apply_input_options(preprocess, inputs or InputOptions(), detect_channels(module, min(preprocess.crop, 224)),
                        mean=mean, std=std)
    declare_channels(module, preprocess.channels)
    return LoadedModel(name=built.name, spec=spec, architecture=built.architecture, weights=built.weights,
                       module=module, preprocess=preprocess, class_names=built.class_names)
