"""The README's bad-input matrix: rows not covered by the per-command test files.

Every row: exit code 2 (1 for validate's findings), ONE `error:` line on stderr, no traceback, and no file
created, changed or left behind (outputs, temp files, resume state).
"""

import os

import pytest

from artifact_factory import make_artifact
from collect_builders import noise_images
from conftest import assert_one_line_error

MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
RENDER = ["render", *MODEL, "--layer", "2", "--units", "0", "--steps", "2", "--size", "32", "--device", "cpu",
          "--quiet"]
COLLECT = ["collect", *MODEL, "--layer", "2", "--workers", "0", "--device", "cpu", "--quiet"]

ROWS = {
    # id: (argv with {d} = work folder, {a} = a valid artifact, expected exit code, words in the error)
    "collect-empty-folder": (COLLECT + ["--data", "{d}/empty", "-o", "{d}/x.h5"], 2, "no images found"),
    "collect-only-broken-images": (COLLECT + ["--data", "{d}/junk", "-o", "{d}/x.h5"], 2, "no usable images"),
    "collect-list-of-missing-files": (COLLECT + ["--data", "{d}/notes.txt", "-o", "{d}/x.h5"], 2, "exist"),
    "collect-out-is-a-folder": (COLLECT + ["--data", "{d}/imgs", "-o", "{d}"], 2, "is a directory"),
    "collect-out-not-an-artifact": (COLLECT + ["--data", "{d}/imgs", "-o", "{d}/notes.txt"], 2, "not a scope artifact"),
    "collect-out-folder-missing": (COLLECT + ["--data", "{d}/imgs", "-o", "{d}/nodir/x.h5"], 2, "does not exist"),
    "collect-batch-0": (COLLECT + ["--data", "{d}/imgs", "--batch", "0", "-o", "{d}/x.h5"], 2, "--batch"),
    "collect-limit-0": (COLLECT + ["--data", "{d}/imgs", "--limit", "0", "-o", "{d}/x.h5"], 2, "--limit"),
    "collect-checkpoint-negative": (COLLECT + ["--data", "{d}/imgs", "--checkpoint", "-1", "-o", "{d}/x.h5"], 2,
                                    "--checkpoint"),
    "render-out-is-a-folder": (RENDER + ["-o", "{d}"], 2, "is a directory"),
    "render-out-not-an-artifact": (RENDER + ["-o", "{d}/notes.txt"], 2, "not a scope artifact"),
    "render-out-folder-missing": (RENDER + ["-o", "{d}/nodir/x.h5"], 2, "does not exist"),
    "render-into-another-models-file": (RENDER + ["-o", "{a}"], 2, "not this model"),
    "render-lr-nan": (RENDER + ["--lr", "nan", "-o", "{d}/x.h5"], 2, "--lr"),
    "render-checkpoint-negative": (RENDER + ["--checkpoint", "-1", "-o", "{d}/x.h5"], 2, "--checkpoint"),
    "render-maco-data-without-images": (RENDER + ["--param", "maco", "--data", "{d}/empty", "-o", "{d}/x.h5"], 2,
                                        "no images found"),
    "layers-input-size-0": (["layers", *MODEL[:3], "--input-size", "0"], 2, "--input-size"),
    "info-empty-file": (["info", "{d}/zero.h5"], 2, "not a scope artifact"),
    "validate-empty-file": (["validate", "{d}/zero.h5"], 1, "1 problem"),
    "show-empty-file": (["show", "{d}/zero.h5", "head.fc:1"], 2, "not a scope artifact"),
    "query-not-an-artifact": (["query", "{d}/notes.txt", "--label", "cat"], 2, "not a scope artifact"),
    "query-top-0": (["query", "{a}", "--top", "0"], 2, "--top"),
    "diff-with-a-text-file": (["diff", "{a}", "{d}/notes.txt"], 2, "not a scope artifact"),
    "diff-max-images-0": (["diff", "{a}", "{a}", "--max-images", "0"], 2, "--max-images"),
    "pack-not-an-artifact": (["pack", "{d}/notes.txt", "-o", "{d}/p.h5"], 2, "not a scope artifact"),
    "pack-out-folder-missing": (["pack", "{a}", "-o", "{d}/nodir/p.h5"], 2, "does not exist"),
    "export-per-page-0": (["export", "{a}", "-o", "{d}/site", "--per-page", "0"], 2, "per_page"),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty").mkdir()
    (d / "junk").mkdir()
    (d / "junk" / "x.jpg").write_bytes(b"not a jpeg")
    (d / "junk" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    noise_images(d / "imgs", 4, 40)
    (d / "notes.txt").write_text("hello")
    (d / "zero.h5").write_bytes(b"")
    a = make_artifact(d / "a.h5")
    return d, a


def _snapshot(d):
    return {os.path.relpath(os.path.join(root, f), d): os.path.getmtime(os.path.join(root, f))
            for root, _, files in os.walk(d) for f in files}


@pytest.mark.parametrize("row", list(ROWS))
def test_row(row, work, scope_cli):
    d, a = work
    argv, code, words = ROWS[row]
    before = _snapshot(d)
    r = scope_cli(*[x.format(d=d, a=a) for x in argv])
    assert_one_line_error(r, code, words)
    assert _snapshot(d) == before  # nothing created, changed or left behind
