"""Unit spaces read from an artifact and handed to the model: the model layer never opens files.

Render and collect write into an artifact that may already hold spaces fitted by `scope decompose`; a run
that names `BASE@SPACE` reads that space here and binds it to the module (`model.spaces.bind_spaces`).
"""

from __future__ import annotations

import os

from scopecli.artifact import open_artifact
from scopecli.core.errors import ScopeError
from scopecli.core.units import split_space
from scopecli.model.inputspec import InputOptions
from scopecli.model.spaces import BoundSpace, bind_spaces


def load_spaces(path, names, fingerprint: str | None = None) -> list[BoundSpace]:
    """The unit spaces named among `names` (layer names; plain layers are skipped), read from artifact `path`.

    A space must exist there first (`scope decompose`); another model's artifact is refused."""
    wanted = [n for n in dict.fromkeys(names or []) if split_space(n)[1] is not None]
    if not wanted:
        return []
    if path is None or not os.path.exists(path):
        first = wanted[0]
        raise ScopeError(f"layer {first} is a unit space, but {path or 'the output artifact'} does not exist: fit the "
                         f"space first with scope decompose, then render or collect into that file with -o")
    out = []
    with open_artifact(path) as art:
        if fingerprint is not None and art.fingerprint != fingerprint:
            raise ScopeError(f"{path} holds another model ({art.model.get('spec', '?')}); its unit spaces do not "
                             "apply to this one")
        for name in wanted:
            base, space = split_space(name)
            if name not in art.layers or art.element_group(name, "space") is None:
                have = [s["name"] for s in art.spaces]
                hint = f" (it has {', '.join(have[:6])})" if have else ""
                raise ScopeError(f"no unit space {name} in {path}{hint}; fit it first: scope decompose {path} "
                                 f"--layer {base} --method pca --k 32 --name {space}")
            sp = art.space(name)
            base_layout = art.layer(base).effective_layout if base in art.layers else None
            if base_layout is None:
                raise ScopeError(f"{path}: unit space {name} sits on layer {base}, which the file does not hold")
            out.append(BoundSpace(sp, base_layout))
    return out


def attach_spaces(loaded, path, names) -> list[str]:
    """Bind to `loaded.module` the unit spaces named among `names`, read from artifact `path`; returns their names."""
    spaces = load_spaces(path, names, loaded.fingerprint)
    if spaces:
        bind_spaces(loaded.module, spaces)
    return [s.name for s in spaces]


def recorded_inputs(path) -> InputOptions | None:
    """The input spec an existing artifact records (1.2), as options: a run that adds to the file and says nothing
    about its input uses the file's (a 16-bit collect, then a plain `scope render -o FILE`). None: no such file or
    no record (1.0/1.1 files are 8-bit RGB, the default)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open_artifact(path) as art:
            pre = (art.model or {}).get("preprocess") or {}
    except ScopeError:
        return None  # the writer reports what is wrong with the file
    if "channels" not in pre:
        return None
    return InputOptions(bit_depth=pre.get("bit_depth"), value_range=pre.get("value_range"),
                        channel_names=pre.get("channel_names") or None,
                        display_channels=pre.get("display_channels") or None)
