"""The README's Python section runs: every ```python block of it, in order, on the frozen 1.3 file (tiny_cnn with
every element), with the first line's names (path, layer, unit, class) swapped for that file's, and the comparison's
two files for two synthetic files that share enough images."""

from __future__ import annotations

import re
import shutil
from pathlib import Path


from compare_builders import diffable_pair

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
    diffable_pair(tmp_path)
    blocks = [re.sub(r"^file_a, file_b = .*$", "file_a, file_b = 'a.h5', 'b.h5'", b, flags=re.M) for b in blocks]
    assert any("file_a, file_b = 'a.h5'" in b for b in blocks)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own examples
    assert scope["u"].renders and scope["hit"].layer in ("1", "3")
    assert scope["res"].cka_debiased.shape == (2, 2)
