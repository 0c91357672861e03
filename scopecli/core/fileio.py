"""Files scope reads and writes: input/output path checks, atomic replacement, name hints.

Why one module: every command that writes (artifacts, diff files, cards, heatmaps, resume state) must
leave either the old file or the new one, never half of one, with the permissions a user expects
(what the old file had, else the umask default, never mkstemp's 0600); and every command that reads
must say in one line what is wrong with a path. Written once here, used everywhere.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

from scopecli.core.errors import ScopeError


def check_input_file(path, what: str = "file") -> str:
    """The path as str, or a one-line error: missing, a directory, or unreadable."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ScopeError(f"{p}: no such file")
    if os.path.isdir(p):
        raise ScopeError(f"{p}: is a directory, not a {what}")
    if not os.access(p, os.R_OK):
        raise ScopeError(f"{p}: cannot read (permission denied)")
    return p


def check_output_file(path, example: str = "out.h5", suffixes: tuple[str, ...] = ()) -> str:
    """Refuse an output path that cannot be written (a folder, a missing folder, a wrong suffix) before
    any work is done; `suffixes` (e.g. ('.png',)) are the endings the written format has."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise ScopeError(f"{p}: is a directory; give a file name such as {os.path.join(p, example)}")
    parent = os.path.dirname(p) or "."
    if not os.path.isdir(parent):
        raise ScopeError(f"{p}: folder {parent} does not exist")
    if suffixes and not p.lower().endswith(tuple(s.lower() for s in suffixes)):
        raise ScopeError(f"{p}: this writes {' or '.join(s.lstrip('.').upper() for s in suffixes)}; "
                         f"give a name ending in {' or '.join(suffixes)}")
    return p


def did_you_mean(name: str, candidates, what: str = "layer", listing: str | None = None, n: int = 4) -> str:
    """'; did you mean a, b?' for the closest candidates, else '; ' + listing (or the first few names)."""
    names = [str(c) for c in candidates]
    close = difflib.get_close_matches(str(name), names, n=n, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    if listing:
        return f"; {listing}"
    if not names:
        return f"; there is no {what}"
    more = " …" if len(names) > 8 else ""
    return f"; it has: {', '.join(names[:8])}{more}"


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_identity(path) -> tuple | None:
    """What identifies the file at `path` right now (None when absent): detects a concurrent replacement."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ConcurrentChange(ScopeError):
    """The target was replaced by another process while this one worked on its new version."""


class AtomicFile:
    """A new version of `path` built in a temp file beside it, then swapped in with `os.replace`.

    `tmp` is the path to write. `commit()` fsyncs it, gives it the old file's mode (else the umask
    default), replaces the target and fsyncs the folder; `discard()` removes it. With
    `guard=True`, commit refuses (ConcurrentChange, temp file kept as `conflict`) when the target
    changed since this object was made. As a context manager: commit on success, discard on error.
    """

    def __init__(self, path, guard: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        parent = os.path.dirname(self.path)
        self._identity = file_identity(self.path) if guard else None
        self._guard = guard
        self.conflict: str | None = None
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".tmp", dir=parent)
        except OSError as exc:
            raise ScopeError(f"{parent}: cannot write there ({exc.strerror or exc})") from None
        os.close(fd)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def discard(self) -> None:
        if self.tmp and os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self.tmp = None

    def commit(self) -> None:
        if self.tmp is None:
            return
        try:
            try:
                mode = os.stat(self.path).st_mode & 0o777
            except OSError:
                mode = _default_mode()
            os.chmod(self.tmp, mode)
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._guard and file_identity(self.path) != self._identity:
                stem, ext = os.path.splitext(self.path)
                self.conflict = f"{stem}.conflict-{os.getpid()}{ext or '.h5'}"
                os.replace(self.tmp, self.conflict)
                self.tmp = None
                raise ConcurrentChange(f"{self.path} was changed by another process during this run; this run's "
                                       f"result is saved as {self.conflict}")
            os.replace(self.tmp, self.path)
            self.tmp = None
        except BaseException:
            self.discard()
            raise
        try:
            dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def write_bytes_atomic(path, data: bytes) -> None:
    """Replace `path` with `data` atomically (see AtomicFile)."""
    with AtomicFile(path) as f:
        Path(f.tmp).write_bytes(data)
