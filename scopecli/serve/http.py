"""The socket side of `scope serve`: the standard library's threading HTTP server around `app.App`.

Why the standard library and not Starlette/uvicorn: the server answers GET/HEAD for one person on their
own machine, every page is built under one lock (h5py reads one file at a time anyway), so an async
stack buys nothing and would add two dependencies to install. `ThreadingHTTPServer` gives a thread
per connection (many tabs, concurrent requests); all parsing of paths, queries and hosts is ours
(`app.py`), never the standard library's file serving.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scopecli.serve.app import App, Catalog

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class _Handler(BaseHTTPRequestHandler):
    server_version = "scope"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._answer(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(send_body=False)

    def _other(self):
        self._answer(send_body=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    def _answer(self, send_body: bool) -> None:
        if int(self.headers.get("Content-Length") or 0) > 0:
            self.close_connection = True  # a body we will not read: answer, then drop the connection
        resp = self.server.app.handle(self.command, self.path, dict(self.headers.items()))
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body and resp.body and resp.status != 304:
            try:
                self.wfile.write(resp.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


class Server(ThreadingHTTPServer):
    """A `scope serve` server bound to (host, port); `.url` once bound (port 0: a free one)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.verbose = verbose
        self.catalog = catalog
        port = self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        hosts = None
        if is_local(host):  # answer only to local names: a web page cannot reach it through DNS rebinding
            hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {f"{shown}:{port}"}
        self.app = App(catalog, hosts)

    def handle_error(self, request, client_address) -> None:
        """A connection the browser dropped is normal (a closed tab, a cancelled picture): say nothing. Anything
        else: one line on stderr, never the standard library's traceback; the server goes on."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        sys.stderr.write(f"warning: request from {client_address[0]} failed: {type(exc).__name__}: {exc}\n")

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, daemon=True)
        t.start()
        return t


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(server: Server) -> None:
    """Answer requests until Ctrl-C, then close the socket and the files."""
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.catalog.close()
