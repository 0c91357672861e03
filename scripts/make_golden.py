"""Freeze files written by scope 0.1.0 and what 0.1.0 said about them (run ONCE, before a reader change).

Why: a reader rewrite must keep reading old files exactly as before. This writes, into
`tests/fixtures/v0.1.0/`, a real collect+render artifact of a tiny model (with labels, statistics,
probes and a deepdream render), an artifact whose names all need escaping, and a `scope diff --save`
file, plus `golden.json`: their `info --json`, `show --json` for some units, and the export's files
(images by sha256 of their bytes, pages by sha256 of their whitespace-folded HTML). The test suite
(`tests/test_golden_files.py`) compares today's output with it forever. Refuses to overwrite.
Usage: .venv/bin/python scripts/make_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "tests" / "fixtures" / "v0.1.0"
sys.path.insert(0, str(ROOT / "tests"))

SHOW_UNITS = {"tiny.h5": ["blocks.1:3", "blocks.2:0", "stem:1"], "nasty.h5": None}


def scope(*args, cwd) -> str:
    r = subprocess.run([sys.executable, "-m", "scopecli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    if r.returncode != 0:
        sys.exit(f"scope {' '.join(map(str, args))} failed: {r.stderr}")
    return r.stdout


def page_digest(text: str) -> str:
    """sha256 of an HTML page with runs of white space folded (templates may indent differently)."""
    folded = re.sub(r"\s+", " ", re.sub(r">\s+<", "><", text)).strip()
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()


def site_manifest(site: Path) -> dict:
    out = {}
    for p in sorted(site.rglob("*")):
        if not p.is_file() or p.name == ".scope-export.json":
            continue
        rel = p.relative_to(site).as_posix()
        data = p.read_bytes()
        out[rel] = page_digest(data.decode("utf-8")) if p.suffix == ".html" else hashlib.sha256(data).hexdigest()
    return out


def main() -> None:
    if OUT.exists():
        sys.exit(f"error: {OUT} exists; these files are frozen and must not be regenerated")
    from export_helpers import make_nasty_artifact

    work = Path(tempfile.mkdtemp(prefix="scope-golden-"))
    try:
        data = work / "photos"
        data.mkdir()
        rng = np.random.default_rng(7)
        labels = []
        for i in range(100):
            cls = ["apple", "boat", "cloud"][i % 3]
            y, x = np.mgrid[0:56, 0:64]
            img = np.stack([np.sin(x / (2 + c + i % 5) + i) * np.cos(y / (3 + c)) for c in range(3)], -1)
            img = ((img + 1) * 127.5 + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
            name = f"{cls}_{i:02d}.png"
            Image.fromarray(img).save(data / name)
            labels.append(f"{name}\t{cls}")
        (data / "labels.tsv").write_text("\n".join(labels) + "\n")
        model = ["tinymodels:tiny_resnet", "--weights", "random", "--input-size", "64"]
        scope("collect", *model, "--data", data, "--labels", data / "labels.tsv", "-o", "tiny.h5", "--top-k", "4",
              "--bottom-k", "2", "--patch-size", "24", "--probe", "100", "--workers", "0", "--quiet", cwd=work)
        scope("render", *model, "-l", "blocks.1,blocks.2", "-u", "0:4", "--steps", "8", "--size", "32",
              "--batch", "4", "-o", "tiny.h5", "--quiet", cwd=work)
        scope("render", *model, "-l", "stem", "--deepdream", "--steps", "4", "--size", "32", "-o", "tiny.h5",
              "--quiet", cwd=work)
        make_nasty_artifact(work / "nasty.h5")
        scope("diff", "tiny.h5", "tiny.h5", "--save", "diff.h5", "--permutations", "3", "--quiet", cwd=work)
        golden: dict = {"scope_version": None, "info": {}, "show": {}, "export": {}}
        for name in ("tiny.h5", "nasty.h5"):
            info = json.loads(scope("info", name, "--json", cwd=work))
            golden["info"][name] = info
            golden["scope_version"] = info["writer"]
            units = SHOW_UNITS[name]
            if units is None:
                units = [f"{info['layers'][0]['name']}:0"]
            for u in units:
                golden["show"][f"{name} {u}"] = json.loads(scope("show", name, u, "--json", cwd=work))
        scope("export", "tiny.h5", "nasty.h5", "--diff", "diff.h5", "-o", "site", "--quiet", cwd=work)
        golden["export"] = site_manifest(work / "site")
        OUT.mkdir(parents=True)
        for name in ("tiny.h5", "nasty.h5", "diff.h5"):
            shutil.copy2(work / name, OUT / name)
        (OUT / "golden.json").write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        print(f"wrote {OUT}: {sorted(os.listdir(OUT))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
