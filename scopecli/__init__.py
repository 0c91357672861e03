"""scope: OpenAI Microscope as a command-line tool and a file.

The library is usable from Python; the CLI (`scopecli.cli`) only parses arguments and calls it.
"""

from scopecli.core.errors import ScopeError
from scopecli.core.version import __version__


def open_artifact(path):
    """Open a scope artifact read-only (lazy: one unit touches only its bytes)."""
    from scopecli.artifact import open_artifact as _open  # lazy: `import scopecli` stays light (no h5py)
    from scopecli.export import notebook  # noqa: F401  # lazy: gives units and files their notebook display

    return _open(path)


__all__ = ["__version__", "ScopeError", "open_artifact"]
