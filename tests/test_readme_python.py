"""The README's Python section runs: every ```python block of it, in order, on the frozen 1.3 file (tiny_cnn with
every element), with the first line's names (path, layer, unit, class) swapped for that file's, and the comparison's
two files for two synthetic files that share enough images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from compare_builders import image_table, write_artifact

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "artifact-1.3.h5"


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_tour_runs(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3
    path = tmp_path / "lite0.h5"
    shutil.copy(FIXTURE, path)
    first = blocks[0].splitlines()
    names = next(i for i, line in enumerate(first) if line.startswith("path, layer, unit, klass = "))
    first[names] = f"path, layer, unit, klass = {str(path)!r}, '3', 0, 'a'"
    blocks[0] = "\n".join(first)
    # the comparison needs two files sharing 100+ images (the frozen file has 12): two synthetic ones
    rng = np.random.default_rng(0)
    table = image_table(120)
    acts = {"l1": rng.normal(size=(120, 6)), "l2": rng.normal(size=(120, 5))}
    write_artifact(tmp_path / "a.h5", acts, table, name="modelA")
    write_artifact(tmp_path / "b.h5", {k: v + 0.2 * rng.normal(size=v.shape) for k, v in acts.items()}, table,
                   name="modelB")
    blocks = [re.sub(r"^file_a, file_b = .*$", "file_a, file_b = 'a.h5', 'b.h5'", b, flags=re.M) for b in blocks]
    assert any("file_a, file_b = 'a.h5'" in b for b in blocks)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own examples
    assert scope["u"].renders and scope["hit"].layer in ("1", "3")
    assert scope["res"].cka_debiased.shape == (2, 2)
