"""The built-in artifact elements, registered in the order the writer stores them.

Each module is one element: how it is read, written, validated and merged (see `registry.py`).
"""

from scopecli.artifact.elements import layout, renders, examples, strongest, stats, probe, sample, space, inputs, caricatures, atlas, faithfulness  # noqa: F401  (registration order)
from scopecli.artifact.elements import effects  # noqa: F401,E402  (format 1.3)
