"""scripts/quickstart.ipynb runs in a real Jupyter kernel (the [notebook] extra: nbclient, ipykernel) on the frozen
1.3 file, its parameters cell swapped for that file's names, and every output cell shows what it promises."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from compare_builders import diffable_pair

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "artifact-1.3.h5"


def test_the_quickstart_notebook_runs(tmp_path, monkeypatch):
    shutil.copy(FIXTURE, tmp_path / "f.h5")
    nb = nbformat.read(ROOT / "scripts" / "quickstart.ipynb", as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("path, layer, units, label = "))
    params.source = 'path, layer, units, label = "f.h5", "3", [0, 1], "a"'
    # two synthetic files of 120 shared images for the comparison (the frozen file has 12)
    diffable_pair(tmp_path)
    pair = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("file_a, file_b = "))
    pair.source = 'file_a, file_b = "a.h5", "b.h5"'
    # the fixture's model is tests/tinymodels.py:tiny_cnn: the kernel imports it like the test does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len([h for h in html if h.startswith('<div class="scope-nb">')]) >= 3  # the file, the unit, the diff
    assert any("modelA" in h and "CKA" in h for h in html)
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # the two renders
    assert (tmp_path / "quickstart.h5").is_file()
    if importlib.util.find_spec("ipywidgets"):  # the render's progress bar is a live widget in its cell
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
