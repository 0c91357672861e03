"""Datasets: one module reads images, labels and source groups for every command that looks at photos
(collect, caricatures, circuits, monosemanticity); the demo's bundled photos live beside it.

    from scopecli.data import open_source, read_labels
"""

from scopecli.data.dataset import ImageSource, open_source, read_labels

__all__ = ["ImageSource", "open_source", "read_labels"]
