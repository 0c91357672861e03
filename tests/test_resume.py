"""--resume: runs killed with SIGKILL at several points continue to the same content; the file stays readable."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from collect_builders import noise_images
from conftest import assert_one_line_error

from scopecli.artifact import open_artifact
from scopecli.artifact.validate import validate
from scopecli.collect.checkpoint import state_path

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
RENDER = ["--layer", "2", "--layer", "5", "--units", "0:4", "--steps", "32", "--size", "32", "--batch", "1",
          "--device", "cpu", "--quiet", "--checkpoint", "0"]


def _env():
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return env


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scopecli", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scopecli", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=300)


def _kill_when(proc: subprocess.Popen, ready, watch=None, timeout: float = 300.0) -> bool:
    """SIGKILL `proc` as soon as ready() is true (asked again only when file `watch` changed); False when it
    finished first."""
    t0, seen = time.monotonic(), None
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        try:
            st = os.stat(watch) if watch is not None else None
            stamp = (st.st_mtime_ns, st.st_ino) if st is not None else None
            if (watch is None or (stamp is not None and stamp != seen)) and ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            seen = stamp
        except Exception:  # the file is being replaced right now: look again
            pass
        time.sleep(0.02)
    proc.wait()
    return False


def _n_renders(path) -> int:
    if not os.path.exists(path):
        return 0
    with open_artifact(path) as art:
        return sum(len(art.renders(layer)) for layer in art.layers)


def _same_renders(a_path, b_path):
    with open_artifact(a_path) as a, open_artifact(b_path) as b:
        assert a.layers == b.layers
        for layer in a.layers:
            ra, rb = a.renders(layer), b.renders(layer)
            assert [(v.unit, v.diversity_index, v.seed) for v in ra] == [(v.unit, v.diversity_index, v.seed) for v in rb]
            for x, y in zip(ra, rb):
                assert np.array_equal(x.image, y.image)
                assert x.act_final == pytest.approx(y.act_final, rel=1e-5, abs=1e-6)


def test_render_killed_at_several_points_resumes_to_the_same_renders(tmp_path, scope_cli):
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    assert scope_cli("render", *MODEL, *RENDER, "-o", ref).code == 0
    kills = 0
    for at_least in (0, 1, 3, 6):  # 0: before anything was written
        proc = _start("render", *MODEL, *RENDER, "-o", out, "--resume")
        if at_least == 0:
            killed = _kill_when(proc, lambda: True)
        else:
            killed = _kill_when(proc, lambda n=at_least: _n_renders(out) >= n, watch=out)
        kills += killed
        if os.path.exists(out):  # at no kill point is the file unreadable
            assert validate(out) == []
    assert kills >= 3
    r = scope_cli("render", *MODEL, *RENDER, "-o", out, "--resume")
    assert r.code == 0, r.stderr
    _same_renders(ref, out)
    assert validate(out) == []
    # everything present: a further --resume renders nothing
    r = scope_cli("render", *MODEL, *RENDER, "-o", out, "--resume", "--json")
    assert r.code == 0 and json.loads(r.stdout)["rendered"] == 0 and json.loads(r.stdout)["already_done"] == 8
    _same_renders(ref, out)


def _state_batches(path):
    with np.load(state_path(path), allow_pickle=False) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
    return meta["batches"], meta["pass1_done"]


def test_collect_killed_at_several_points_resumes_to_the_same_content(tmp_path, scope_cli):
    noise_images(tmp_path / "imgs", 160, 40)
    args = ["collect", *MODEL, "--data", tmp_path / "imgs", "--layer", "2,5", "--top-k", "3", "--bottom-k", "2",
            "--patch-size", "16", "--probe", "50", "--batch", "4", "--workers", "0", "--device", "cpu", "--quiet",
            "--checkpoint", "0"]
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    assert scope_cli(*args, "-o", ref).code == 0
    assert not os.path.exists(state_path(ref))  # removed once the artifact is written
    kills = 0
    for ready in (lambda: _state_batches(out)[0] >= 3, lambda: _state_batches(out)[0] >= 20,
                  lambda: _state_batches(out)[1]):  # the last one: pass 1 done, killed in pass 2
        proc = _start(*args, "-o", out, "--resume")
        kills += _kill_when(proc, ready, watch=state_path(out))
        assert not os.path.exists(out) or validate(out) == []  # the artifact is written only at the end
    assert kills >= 2
    # other parameters than the saved state: refused, state kept
    r = scope_cli(*[a if a != "3" else "4" for a in args], "-o", out, "--resume")
    assert_one_line_error(r, 2, "other parameters")
    r = scope_cli(*args, "-o", out, "--resume")
    assert r.code == 0, r.stderr
    assert "resumed pass 1" in r.stderr
    assert not os.path.exists(state_path(out)) and not [p for p in os.listdir(tmp_path) if ".collect-state" in p]
    with open_artifact(ref) as a, open_artifact(out) as b:
        assert a.dataset.paths == b.dataset.paths and a.dataset.sha256 == b.dataset.sha256
        for layer in ("2", "5"):
            for which in ("top", "bottom"):
                ea, eb = a.examples(layer, which), b.examples(layer, which)
                assert np.array_equal(ea.image_index, eb.image_index)
                assert np.array_equal(ea.score, eb.score, equal_nan=True)
                assert np.array_equal(ea.loc, eb.loc)
                assert all(np.array_equal(pa, pb) for ra, rb in zip(ea.patches, eb.patches) for pa, pb in zip(ra, rb)
                           if pa is not None)
            sa, sb = a.stats(layer), b.stats(layer)
            for k in ("count", "mean", "std", "min", "max", "frac_pos", "quantiles"):
                assert np.array_equal(getattr(sa, k), getattr(sb, k)), k
            assert np.array_equal(a.probe(layer).acts, b.probe(layer).acts)


def test_resume_state_that_is_not_ours_is_a_clean_error(tmp_path, scope_cli):
    noise_images(tmp_path / "imgs", 8, 40)
    out = tmp_path / "out.h5"
    with open(state_path(out), "wb") as fh:
        fh.write(b"PK\x03\x04 definitely not a zip")
    r = scope_cli("collect", *MODEL, "--data", tmp_path / "imgs", "--layer", "2", "--workers", "0", "--device", "cpu",
                  "--quiet", "-o", out, "--resume")
    assert_one_line_error(r, 2, "resume state")
    r = scope_cli("collect", *MODEL, "--data", tmp_path / "imgs", "--layer", "2", "--workers", "0", "--device", "cpu",
                  "--quiet", "-o", out, "--checkpoint", "-1")
    assert_one_line_error(r, 2, "--checkpoint")
