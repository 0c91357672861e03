"""Write the site into a temp folder beside the target, then swap it in; never delete user data.

Why: re-exporting must replace an old gallery cleanly (no stale pages of a removed model), a crash
must leave the old gallery intact, and a typo in `-o` must never wipe someone's folder. A previous
export is recognised by its marker file, which lists every file it wrote; a folder holding anything
else (or no marker) is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from scopecli.core.errors import ScopeError

MARKER = ".scope-export.json"
MARKER_FORMAT = "scope.export"


def _walk(root: Path) -> tuple[set[str], set[str]]:
    files, dirs = set(), set()
    for base, dnames, fnames in os.walk(root):
        rel = Path(base).relative_to(root)
        for d in dnames:
            p = rel / d
            if (root / p).is_symlink():
                files.add(p.as_posix())  # a link is never ours: it will be reported below
            else:
                dirs.add(p.as_posix())
        for f in fnames:
            files.add((rel / f).as_posix())
    return files, dirs


def check_replaceable(out: Path) -> bool:
    """True if `out` exists and may be replaced, False if it does not exist; ScopeError otherwise."""
    if out.is_symlink():
        raise ScopeError(f"{out}: is a symbolic link; give the real folder or a new path")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ScopeError(f"{out}: exists and is not a folder; refusing to replace it")
    try:
        entries = os.listdir(out)
    except OSError as exc:
        raise ScopeError(f"{out}: cannot list the folder ({exc.strerror or exc})")
    if not entries:
        return True
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        raise ScopeError(f"{out}: folder is not empty and is not a scope export; refusing to replace it "
                         "(choose a new or empty folder)")
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        ours = set(data["files"]) if data.get("format") == MARKER_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = None
    if ours is None:
        raise ScopeError(f"{out}: has an unreadable {MARKER}; refusing to replace the folder")
    files, dirs = _walk(out)
    foreign = sorted(files - ours - {MARKER})
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ScopeError(f"{out}: holds files scope export did not write ({foreign[0]}{more}); "
                         "move them away or choose another folder")
    return True


def new_staging(out: Path) -> Path:
    """An empty folder beside `out` (same file system, so the swap is a rename)."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.scope-tmp-", dir=parent))
    except OSError as exc:
        raise ScopeError(f"{out}: cannot create a folder beside it ({exc.strerror or exc})")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def write_marker(staging: Path, meta: dict) -> None:
    """List every file under `staging` in the marker (so a later export knows what it may delete)."""
    files, _ = _walk(staging)
    data = dict(meta, format=MARKER_FORMAT, files=sorted(files))
    (staging / MARKER).write_text(json.dumps(data, indent=0, sort_keys=True), encoding="utf-8")


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` (a checked previous export, an empty folder, or nothing) by `staging`."""
    existed = check_replaceable(out)  # again: the folder may have changed while we wrote
    if not existed:
        os.rename(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.scope-old-", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError as exc:
        os.rename(old, out)
        raise ScopeError(f"{out}: cannot move the new site into place ({exc.strerror or exc}); the old one is unchanged")
    shutil.rmtree(old, ignore_errors=True)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
