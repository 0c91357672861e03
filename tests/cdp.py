"""A tiny Chrome DevTools Protocol client over `--remote-debugging-pipe` (test helper, stdlib only).

Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4. One
page is opened and attached with a flat session; every event is kept so tests can inspect console
messages, log entries and network requests after a navigation.

    with Browser() as b:
        page = b.new_page(1280, 900)
        page.goto("file:///tmp/site/index.html")
        page.evaluate("document.title")
        page.screenshot("/tmp/shot.png")
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary on PATH (or $CHROMIUM), else None."""
    env = os.environ.get("CHROMIUM")
    if env and os.path.exists(env):
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven through the DevTools pipe."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise CdpError("no chromium binary found")
        self.timeout = timeout
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._closed = False

    # ---------------------------------------------------------------------------------------- process

    def __enter__(self) -> "Browser":
        self._profile = tempfile.mkdtemp(prefix="scope-cdp-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def arrange_fds():  # runs in the child: commands on fd 3, replies on fd 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            self.binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
            "--allow-file-access-from-files", "about:blank",
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=arrange_fds, close_fds=False)
        # close_fds=False: closing would run after preexec_fn and take fds 3 and 4 too (Python fds are
        # non-inheritable by default, so nothing else leaks)
        os.close(to_child_r)
        os.close(from_child_w)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- wire

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw.decode("utf-8"))
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)
        with self._cond:
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float | None = None) -> dict:
        """Send one command and wait for its reply's result (CdpError on a protocol error)."""
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode("utf-8") + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise CdpError(f"{method}: no reply")
                self._cond.wait(min(left, 0.5))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def events(self) -> list[dict]:
        """Drain the events received so far."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> tuple[dict, list[dict]]:
        """Wait for one event of `method` in `session`; returns it and every event seen meanwhile."""
        seen = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError(f"timed out waiting for {method}")
            try:
                ev = self._events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            seen.append(ev)
            if ev.get("method") == method and ev.get("sessionId") == session:
                return ev, seen

    def new_page(self, width: int = 1280, height: int = 900) -> "Page":
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return page


class Page:
    """One attached tab; `goto` collects the console errors, log errors and request URLs of a load."""

    def __init__(self, browser: Browser, session: str):
        self.b, self.session = browser, session
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.log_errors: list[str] = []

    def _absorb(self, events: list[dict]) -> None:
        for ev in events:
            if ev.get("sessionId") != self.session:
                continue
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Network.requestWillBeSent":
                self.requests.append(p["request"]["url"])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                self.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                self.console_errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                self.log_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())

    def goto(self, url: str) -> None:
        self._absorb(self.b.events())
        self.requests, self.console_errors, self.log_errors = [], [], []
        self.b.send("Page.navigate", {"url": url}, session=self.session)
        _, seen = self.b.wait_event("Page.loadEventFired", self.session)
        self._absorb(seen)

    def wait_for_path(self, suffix: str, seconds: float = 10.0) -> str:
        """location.pathname once it ends with `suffix` (navigation is asynchronous), or the last one seen."""
        path = ""
        for _ in range(int(seconds / 0.1)):
            self.settle(0.1)
            try:
                path = self.evaluate("location.pathname")
            except CdpError:  # the old page's context went away mid-call
                continue
            if path.endswith(suffix):
                break
        return path

    def evaluate(self, expression: str, await_promise: bool = False):
        """Value of a JavaScript expression (JSON-serialisable results only)."""
        res = self.b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": await_promise}, session=self.session)
        if "exceptionDetails" in res:
            raise CdpError(f"evaluate: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def settle(self, seconds: float = 0.3) -> None:
        """Let late events (lazy image requests, console messages) arrive and record them."""
        time.sleep(seconds)
        self._absorb(self.b.events())

    def screenshot(self, path: str, full_page: bool = False) -> str:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": min(h, 4000), "scale": 1}
        data = self.b.send("Page.captureScreenshot", params, session=self.session)["data"]
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return path
