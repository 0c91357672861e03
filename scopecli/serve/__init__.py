"""`scope serve`: a local, read-only web app over artifacts themselves (no export step)."""

from scopecli.serve.app import App, Catalog, Response
from scopecli.serve.http import Server, serve

__all__ = ["App", "Catalog", "Response", "Server", "serve"]
