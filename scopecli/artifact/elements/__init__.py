"""The built-in artifact elements, registered in the order the writer stores them.

Each module is one element: how it is read, written, validated and merged (see `registry.py`).
"""

from scopecli.artifact.elements import layout, renders, examples, strongest, stats, probe, sample, space, inputs, caricatures, atlas  # noqa: F401  (registration order)
