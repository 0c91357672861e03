"""Old files read the same through this tree as through another (`--baseline DIR`, e.g. a 0.2.0 checkout).

Why: a restructuring must not change what a collaborator sees in a file they were sent. For each frozen
fixture (format 1.0 and 1.1 artifacts, the 0.1.0 files and diff file) this runs, with each tree's code as
a subprocess, `scope info --json`, `scope show --json` of the first units of every layer, `scope diff
--json`, and `scope export`, then compares the JSON (timings and paths left out) and every page of the
gallery with each picture src replaced by the sha256 of the bytes it shows (0.3.0 stores pictures
content-addressed or inline and draws heatmaps in the page: the same pictures, stored differently), the
version stamp, the heatmap script's CSP hash and the export's own folder name masked.

    python scripts/check_old_files.py --baseline ../scope-0.2.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.append(str(HERE / "tests"))
from export_helpers import pictures_by_content  # noqa: E402  (the golden test's comparison of pages)
FIXTURES = HERE / "tests" / "fixtures"
ARTIFACTS = ["artifact-1.0.h5", "artifact-1.1.h5", "v0.1.0/tiny.h5", "v0.1.0/nasty.h5"]
DIFFS = [("v0.1.0/tiny.h5", "v0.1.0/nasty.h5"), ("artifact-1.0.h5", "artifact-1.1.h5")]
VOLATILE = {"seconds", "elapsed_s", "time_s", "path", "output", "created", "created_utc"}


def scope(tree: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "scopecli", *args], cwd=tree, env=env, capture_output=True,
                          text=True)


def clean(value):
    """JSON with run-dependent fields (timings, output paths) dropped."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def units_of(tree: Path, path: Path) -> list[str]:
    info = json.loads(scope(tree, "info", str(path), "--json").stdout or "{}")
    layers = info.get("layers") or []
    names = [lay["name"] if isinstance(lay, dict) else str(lay) for lay in layers]
    return [f"{name}:0" for name in names[:6]]


def outputs(tree: Path, work: Path) -> dict[str, object]:
    """Everything this tree prints or writes for the fixtures, keyed by what was asked."""
    out: dict[str, object] = {}
    for name in ARTIFACTS:
        path = FIXTURES / name
        r = scope(tree, "info", str(path), "--json")
        out[f"info {name}"] = (r.returncode, clean(json.loads(r.stdout)) if r.returncode == 0 else r.stderr)
        for unit in units_of(tree, path):
            r = scope(tree, "show", str(path), unit, "--json")
            out[f"show {name} {unit}"] = (r.returncode, clean(json.loads(r.stdout)) if r.returncode == 0
                                          else r.stderr.strip())
    for a, b in DIFFS:
        r = scope(tree, "diff", str(FIXTURES / a), str(FIXTURES / b), "--json", "--quiet")
        out[f"diff {a} {b}"] = (r.returncode, clean(json.loads(r.stdout)) if r.returncode == 0 else r.stderr.strip())
    site = work / "site"
    r = scope(tree, "export", *[str(FIXTURES / n) for n in ARTIFACTS[:3]], "--diff",
              str(FIXTURES / "v0.1.0" / "diff.h5"), "-o", str(site), "--quiet")
    out["export"] = r.returncode if r.returncode == 0 else r.stderr.strip()
    for f in sorted(p for p in site.rglob("*") if p.is_file() and p.suffix in (".html", ".css")):
        text = pictures_by_content(f) if f.suffix == ".html" else f.read_text("utf-8", "replace")
        text = re.sub(r" script-src (?:'|&#x27;)sha256-[A-Za-z0-9+/=]+(?:'|&#x27;);", "", text)
        text = re.sub(r"scope \d+\.\d+\.\d+\S*", "scope VERSION", text).replace(str(work), "WORK")
        out[f"page {f.relative_to(site)}"] = text if f.suffix == ".css" else hashlib.sha256(text.encode()).hexdigest()
    return out


def same(key: str, mine, theirs) -> bool:
    """Equal; the stylesheet may only grow (new views add rules, every old rule stays as it was)."""
    if key.endswith(".css") and isinstance(mine, str) and isinstance(theirs, str):
        return mine.startswith(theirs)
    return mine == theirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, type=Path, help="another checkout of scope (e.g. 0.2.0)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as ta, tempfile.TemporaryDirectory() as tb:
        mine, theirs = outputs(HERE, Path(ta)), outputs(args.baseline.resolve(), Path(tb))
    keys = sorted(set(mine) | set(theirs))
    differ = [k for k in keys if not same(k, mine.get(k), theirs.get(k))]
    kinds: dict[str, int] = {}
    for k in keys:
        kinds[k.split()[0]] = kinds.get(k.split()[0], 0) + 1
    print(f"compared {len(keys)} outputs ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
    for k in differ:
        print(f"DIFFERS: {k}\n  this tree: {str(mine.get(k))[:300]}\n  baseline:  {str(theirs.get(k))[:300]}")
    print("identical" if not differ else f"{len(differ)} of {len(keys)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
