"""The model an artifact was written for, built again from what the artifact records.

Why: commands that add views computed with the model to an existing artifact (`scope circuits`,
`scope atlas`) take the artifact, not a model spec. The spec, the weights label and the preprocessing
recorded in `/model` rebuild it; the fingerprint must match, so nothing is ever computed with a
different model than the one whose units the file describes. `--model` / `--weights` override what is
recorded (a custom factory's module not importable here, weights loaded from a file).
"""

from __future__ import annotations

from scopecli.core.errors import ScopeError
from scopecli.model.loaded import LoadedModel
from scopecli.model.inputspec import spec_from_dict
from scopecli.model.resolve import resolve_model


def weights_argument(label: str | None) -> str:
    """The --weights value that rebuilds a recorded weights label (`factory`, `random:0`, `IMAGENET1K`)."""
    label = str(label or "DEFAULT")
    if label == "factory":
        return "DEFAULT"
    if label.lower().startswith(("random", "none")):
        return "random"
    if label.startswith("file:"):
        raise ScopeError(f"the artifact's model was built with weights from a file ({label}); pass --weights PATH")
    return label


def model_for_artifact(model_info: dict, spec: str | None = None, weights: str | None = None) -> LoadedModel:
    """Rebuild the artifact's model (with its recorded preprocessing); refuse one whose fingerprint differs."""
    spec = spec or model_info.get("spec")
    if not spec:
        raise ScopeError("the artifact does not record its model spec; pass --model SPEC")
    loaded = resolve_model(spec, weights=weights if weights else weights_argument(model_info.get("weights")))
    spec_from_dict(loaded.preprocess, model_info.get("preprocess") or {})
    want = model_info.get("fingerprint")
    if want and loaded.fingerprint != want:
        raise ScopeError(f"{spec} with weights {loaded.weights} has fingerprint {loaded.fingerprint[:12]}…, not the "
                         f"artifact's model ({str(want)[:12]}…); pass --model/--weights that build it")
    return loaded


def artifact_model(model_info: dict, fingerprint: str, loaded=None, spec: str | None = None, weights: str | None = None,
                   path: str = "the artifact") -> LoadedModel:
    """The model a command that adds to an artifact runs: `loaded` (a caller's, e.g. collect's own) checked against
    the file's fingerprint, or rebuilt from what the file records."""
    if loaded is None:
        return model_for_artifact(model_info, spec, weights)
    if loaded.fingerprint != fingerprint:
        raise ScopeError(f"{path} was written for another model (fingerprint {fingerprint[:12]}…)")
    return loaded
