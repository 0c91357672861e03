"""scope: OpenAI Microscope as a command-line tool and a file.

The library is usable from Python; the CLI (`scopecli.cli`) only parses arguments and calls it.
"""

__version__ = "0.2.0"

from scopecli.errors import ScopeError  # noqa: E402


def open_artifact(path):
    """Open a scope artifact read-only (lazy: one unit touches only its bytes)."""
    from scopecli.artifact import open_artifact as _open

    return _open(path)


__all__ = ["__version__", "ScopeError", "open_artifact"]
