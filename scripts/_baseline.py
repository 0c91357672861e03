"""Shared by the benchmarks' `--baseline REV`: another tree's `scopecli/` in a temporary folder, to put
first on a child process's PYTHONPATH, so both trees are timed side by side in one run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def extract(rev: str) -> str:
    """`scopecli/` of git revision rev in a new temporary folder; rev may also be a folder that holds a
    `scopecli/` already (a copy taken to a machine without the repository)."""
    out = tempfile.mkdtemp(prefix="scope-baseline-")
    if os.path.isdir(os.path.join(rev, "scopecli")):
        shutil.copytree(os.path.join(rev, "scopecli"), os.path.join(out, "scopecli"))
        return out
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "scopecli"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
    return out
