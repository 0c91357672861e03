"""What the optional-extra families (timm, open_clip) share: importing an extra, the offline Hugging Face
hub and its cache, preprocessing from a library's config, and their `scope models` rows.

Why scope never downloads here: a render or collect run must not depend on a network that clusters often
do not have, nor fetch files nobody asked for. Pretrained weights come only from the library's local cache
(the Hugging Face hub cache, with the hub switched offline for the call); when they are not there, one
line names the folder the library expects and how to work offline (`--weights random` or a PATH).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import warnings
from pathlib import Path

from scopecli.core.errors import ScopeError
from scopecli.model.loaded import Preprocess

OFFLINE_HINT = "use --weights random or --weights PATH to work offline"

# torchvision.transforms.InterpolationMode names that Preprocess understands
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def installed(module: str) -> bool:
    """Whether an optional library is importable, without importing it (`scope models` stays fast)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_extra(module: str, spec: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScopeError(f"{spec} needs the [{extra}] extra: pip install 'scopecli[{extra}]'") from None
    except Exception as exc:  # installed but broken
        raise ScopeError(f"cannot import {module}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


@contextlib.contextmanager
def hub_offline():
    """The Hugging Face hub offline for the duration (the environment variable, and the flag that
    huggingface_hub read from it at import); both restored after."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except Exception:
        constants = None
    old_flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_flag


@contextlib.contextmanager
def quiet():
    """The libraries' own warnings and log lines stay off stderr while a model is built: scope reports
    what went wrong in one line. (A NullHandler on the root logger also keeps a library's module-level
    `logging.warning` from installing a stderr handler for the rest of the run.)"""
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    previous = root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        root.removeHandler(handler)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub computes it ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/...)."""
    from huggingface_hub import constants

    return Path(getattr(constants, "HF_HUB_CACHE", None) or constants.HUGGINGFACE_HUB_CACHE)


def hf_repo_dir(repo_id: str) -> Path:
    """Where the hub cache keeps a model repository (models--ORG--NAME)."""
    try:
        from huggingface_hub.file_download import repo_folder_name

        folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    except Exception:
        folder = "models--" + repo_id.replace("/", "--")
    return hf_cache_dir() / folder


def hf_cached_file(repo_id: str, filenames: list[str], revision: str | None = None) -> str | None:
    """The first of filenames that the hub cache holds for repo_id (no network), else None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def safe_alternatives(filename: str, default_bin: str, default_safe: str) -> list[str]:
    """The files a library tries for one hub entry, in its order: the safetensors twin first."""
    if filename.endswith(".safetensors"):
        return [filename]
    if filename == default_bin:
        return [default_safe, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def not_cached(what: str, cache: str, where: str) -> ScopeError:
    return ScopeError(
        f"pretrained weights for {what} are not in the local {cache} and scope does not download: "
        f"expected {where}; {OFFLINE_HINT}"
    )


def closest(name: str, names: list[str], prefix: str, listing: str) -> str:
    """'; did you mean PREFIX/a, PREFIX/b?' (compared without the prefix), else '; ' + listing."""
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.6)
    if close:
        return "; did you mean " + ", ".join(f"{prefix}/{lowered[c]}" for c in close) + "?"
    return f"; {listing}"


def preprocess_from(mean, std, crop, resize, interpolation) -> Preprocess:
    interp = str(interpolation or "bilinear").lower()
    return Preprocess(
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        resize=int(resize),
        crop=int(crop),
        interpolation=interp if interp in _INTERPOLATIONS else "bilinear",
    )


def image_side(size) -> int:
    """An image size given as N, (H, W) or (C, H, W): its height."""
    if isinstance(size, (list, tuple)):
        return int(size[-2] if len(size) >= 2 else size[0])
    return int(size)


def claim_prefix(spec: str, prefixes: tuple[str, ...], canonical: str, slash: str = "/") -> str | None:
    """`PREFIX/NAME` -> `canonical/NAME` (any further '/' in NAME becomes `slash`), else None."""
    head, sep, rest = spec.partition("/")
    if sep and head.lower().replace("-", "_") in prefixes:
        return f"{canonical}/{rest.strip().replace('/', slash)}"
    return None


def extra_family_rows(family: str, module: str, distribution: str, extra: str, pip: str,
                       listing: str, any_weights: str, microscope_models) -> list[dict]:
    """`scope models` rows of a family that lives in an optional extra: one row for any of its models
    (`listing` says where their names come from), then one per Microscope model it carries, so the
    table shows the Microscope names whether or not the extra is installed."""
    ok = installed(module)
    source = (f"{module} {_version(distribution)} ([{extra}] extra)" if ok
              else f"{module} ([{extra}] extra, not installed: {pip})")
    rows = [{
        "name": f"{family}/<name>",
        "family": family,
        "source": f"{source}: {listing}",
        "weights": any_weights,
        "available": ok,
    }]
    for microscope, name, tag in microscope_models:
        rows.append({
            "name": f"{family}/{name}",
            "family": family,
            "source": f"{source}: Microscope's {microscope}",
            "weights": f"DEFAULT ({tag}), random, PATH",
            "available": ok,
        })
    return rows


def extra_family_names(family: str, module: str, microscope_models, list_models) -> list[str]:
    """Every `family/NAME` the extra's library lists (`list_models(library)`), for name completion and
    'did you mean'; only the Microscope models when the extra is missing, none when it fails to import."""
    if not installed(module):
        return [f"{family}/{name}" for _, name, _ in microscope_models]
    try:
        with quiet():
            library = importlib.import_module(module)
        return [f"{family}/{name}" for name in list_models(library)]
    except Exception:
        return []
