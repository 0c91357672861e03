"""Run a model only as far as it needs to go: capture named layers' outputs and stop after the deepest.

Render and collect never need the layers after their deepest target (nor the classifier head), so the
forward pass is cut there: a forward hook on each target records its output, and once every target has
fired the hook raises a private exception that unwinds the rest of the forward.

The dotted-name lookup (`get_module`) lives here, under the layer table (model/layers.py), which builds on
capture to measure receptive fields: the dependency goes one way, layers -> capture.
"""

from __future__ import annotations

import torch
from torch import nn

from scopecli.core.errors import ScopeError
from scopecli.core.fileio import did_you_mean
from scopecli.model.adapter import module_tensor
from scopecli.model.spaces import resolve_space
from scopecli.core.units import split_space

LAYERS_HINT = "`scope layers MODEL` lists them"


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The module at a dotted name; unknown names get a one-line error with close suggestions."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    raise ScopeError(f"unknown layer '{name}'" + did_you_mean(name, names, listing=LAYERS_HINT))


class _StopForward(Exception):
    """Raised inside a hook once every requested layer has produced its output."""


class LayerTap:
    """Context manager: `tap(x)` returns {layer name: output} and runs nothing after the deepest layer.

    A module that runs several times in one forward (a shared activation module) is captured at its
    first call. A unit-space name `BASE@SPACE` (bound with `model.spaces.bind_spaces`) hooks BASE and
    gives the space's units z in the space's layout.
    """

    def __init__(self, model: nn.Module, names, stop: bool = True):
        self.model = model
        self.names = list(dict.fromkeys(names))
        if not self.names:
            raise ScopeError("no layers requested")
        self.stop = stop
        # what each hooked module gives: its own output (None) and/or unit spaces encoding it
        self._wants: dict[str, list] = {}
        for name in self.names:
            if split_space(name)[1] is None:
                self._wants.setdefault(name, []).append((name, None))
            else:
                space = resolve_space(model, name)
                self._wants.setdefault(space.base, []).append((name, space))
        self._modules = {base: get_module(model, base) for base in self._wants}
        self._handles: list = []
        self._outputs: dict[str, torch.Tensor] = {}

    def _hook(self, base):
        wants = self._wants[base]

        def hook(module, inputs, output):
            for name, space in wants:
                if name in self._outputs:
                    continue
                out = module_tensor(output, base)
                self._outputs[name] = out if space is None else space.encode(out)
            if self.stop and len(self._outputs) == len(self.names):
                raise _StopForward

        return hook

    def __enter__(self):
        for base, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(base)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self._handles:
            raise RuntimeError("LayerTap must be used as a context manager")
        self._outputs = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        missing = [n for n in self.names if n not in self._outputs]
        if missing:
            raise ScopeError(f"layer(s) {', '.join(missing)} never ran in the model's forward pass")
        outputs, self._outputs = self._outputs, {}
        return {name: outputs[name] for name in self.names}


def capture(model: nn.Module, x: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """One-shot convenience around LayerTap."""
    with LayerTap(model, names) as tap:
        return tap(x)
