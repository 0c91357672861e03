"""Scale-out: torchrun ranks and `--shard k/n` give the same artifact content as one process."""

import os
import subprocess
import sys

import numpy as np
import pytest

from collect_builders import noise_images
from conftest import assert_one_line_error

from scopecli.jobs import distributed as dist
from scopecli.artifact import open_artifact
from scopecli.core.errors import ScopeError
from scopecli.render.objectives import RenderTarget

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = ["tinymodels:tiny_cnn", "--weights", "random", "--input-size", "32"]
RENDER = ["--layer", "2", "--layer", "5", "--units", "0:5", "--steps", "8", "--size", "32", "--batch", "2",
          "--device", "cpu", "--quiet"]


def _env():
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _scope(*args, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)] \
        if torchrun else [sys.executable]
    return subprocess.run(launcher + ["-m", "scopecli", *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=300)


def _same_renders(a_path, b_path, layers):
    with open_artifact(a_path) as a, open_artifact(b_path) as b:
        for layer in layers:
            ra, rb = a.renders(layer), b.renders(layer)
            assert [(v.unit, v.objective, v.diversity_index) for v in ra] == \
                   [(v.unit, v.objective, v.diversity_index) for v in rb]
            for x, y in zip(ra, rb):
                assert x.seed == y.seed
                # identical pixels and activations: both runs rendered this image in the same batch (same mates,
                # same size, one thread), one deterministic computation twice; in other batches another CPU's
                # kernels may round differently and the optimisation amplifies it (test_render_engine)
                assert np.array_equal(x.image, y.image), (layer, x.unit)
                assert x.act_final == y.act_final, (layer, x.unit)


def test_torchrun_two_ranks_render_and_collect_like_one_process(tmp_path):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    r = _scope("render", *MODEL, *RENDER, "-o", two, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "from 2 ranks" in r.stdout and r.stdout.count("wrote") == 1  # only rank 0 talks
    assert _scope("render", *MODEL, *RENDER, "-o", one).returncode == 0
    _same_renders(one, two, ["2", "5"])
    assert not [p for p in os.listdir(tmp_path) if ".part-" in p]  # parts packed and removed

    noise_images(tmp_path / "imgs", 22, 40)
    coll = ["--data", tmp_path / "imgs", "--layer", "2,5", "--top-k", "3", "--bottom-k", "2", "--patch-size", "16",
            "--probe", "10", "--batch", "4", "--workers", "0", "--device", "cpu", "--quiet"]
    r = _scope("collect", *MODEL, *coll, "-o", two, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _scope("collect", *MODEL, *coll, "-o", one).returncode == 0
    with open_artifact(one) as a, open_artifact(two) as b:
        assert a.dataset.paths == b.dataset.paths
        for layer in ("2", "5"):
            for which in ("top", "bottom"):
                ea, eb = a.examples(layer, which), b.examples(layer, which)
                assert np.array_equal(ea.units, eb.units)
                assert np.array_equal(ea.image_index, eb.image_index)  # identical top-k
                assert np.array_equal(ea.score, eb.score, equal_nan=True)
                assert np.array_equal(ea.loc, eb.loc)
            sa, sb = a.stats(layer), b.stats(layer)
            assert np.array_equal(sa.max, sb.max) and np.allclose(sa.mean, sb.mean, rtol=1e-6)
            assert np.array_equal(a.probe(layer).acts, b.probe(layer).acts)
    _same_renders(one, two, ["2", "5"])  # renders kept when collect packs into the existing file
    r = _scope("validate", two)
    assert r.returncode == 0, r.stdout + r.stderr


def test_render_shards_then_pack_equal_one_run(tmp_path, scope_cli):
    # --batch 2 = the diversity group: every batch is one unit's two images, in the shards as in the one run.
    # Job-array shards deal whole units, not the one run's batches, so with a larger batch a unit would have
    # other batch mates (or another batch size) than in the one run, and pixels would only match on CPUs
    # whose kernels happen to round alike for both (split_units: "beyond float rounding of batch mates").
    fast = ["--layer", "2", "--units", "0:5", "--diversity", "2", "--steps", "4", "--size", "32", "--batch", "2",
            "--device", "cpu", "--quiet"]
    sys.path.insert(0, HERE)
    parts = []
    for k in (1, 2, 3):
        p = tmp_path / f"s{k}.h5"
        r = scope_cli("render", *MODEL, *fast, "--shard", f"{k}/3", "-o", p)
        assert r.code == 0, r.stderr
        parts.append(p)
    with open_artifact(parts[0]) as a:  # shard 1/3 of units 0..4 dealt round-robin: units 0 and 3, both images
        assert sorted((v.unit, v.diversity_index) for v in a.renders("2")) == [(0, 0), (0, 1), (3, 0), (3, 1)]
    r = scope_cli("pack", *parts, "-o", tmp_path / "packed.h5", "--quiet")
    assert r.code == 0, r.stderr
    r = scope_cli("render", *MODEL, *fast, "-o", tmp_path / "one.h5")
    assert r.code == 0, r.stderr
    _same_renders(tmp_path / "one.h5", tmp_path / "packed.h5", ["2"])


def test_shard_errors_are_one_line(tmp_path, scope_cli, monkeypatch):
    r = scope_cli("render", *MODEL, "--layer", "2", "--units", "0", "--shard", "2/2", "--steps", "2", "--size", "32",
                  "--device", "cpu", "-o", tmp_path / "x.h5")
    assert_one_line_error(r, 2, "has no units")
    r = scope_cli("render", *MODEL, "--layer", "2", "--shard", "3/2", "--device", "cpu", "-o", tmp_path / "x.h5")
    assert_one_line_error(r, 2, "1 <= k <= n")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    r = scope_cli("render", *MODEL, "--layer", "2", "--shard", "1/2", "--device", "cpu", "-o", tmp_path / "x.h5")
    assert_one_line_error(r, 2, "under torchrun")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ScopeError, match="RANK=5"):
        dist.resolve_share(None)
    assert not os.path.exists(tmp_path / "x.h5")


def test_split_units_is_a_partition_that_keeps_a_units_images_together():
    targets = [RenderTarget(layer, u, "channel", d) for layer in ("a", "b") for u in range(5) for d in range(3)]
    shares = [dist.split_units(targets, k, 4) for k in (1, 2, 3, 4)]
    flat = [t for s in shares for t in s]
    assert sorted(flat, key=targets.index) == targets and len(flat) == len(targets)
    for s in shares:
        units = {(t.layer, t.unit) for t in s}
        assert all(sum(1 for t in s if (t.layer, t.unit) == u) == 3 for u in units)
    assert {(t.layer, t.unit) for t in shares[0]} == {("a", 0), ("a", 4), ("b", 3)}
    assert dist.part_path("out/model.h5", 2, 4) == "out/model.part-2-of-4.h5"
    assert dist.resolve_share("2/3") == dist.Share(2, 3, False)


@pytest.mark.parametrize("n_targets,diversity,batch,ranks", [(10, 1, 2, 2), (9, 1, 2, 2), (15, 3, 4, 2),
                                                             (14, 1, 3, 4), (12, 2, 4, 3)])
def test_torchrun_ranks_run_exactly_the_batches_of_one_process(n_targets, diversity, batch, ranks):
    """What the torchrun test's bit-identical pixels rest on: render_job hands each rank whole batches of the
    one-process plan, and the engine, batching the rank's share again, gets those same batches back (same
    mates, same sizes; a short last batch stays last)."""
    from scopecli.render.engine import batches

    targets = [RenderTarget("l", u, "channel", d) for u in range(n_targets // diversity) for d in range(diversity)]
    whole = list(batches(targets, batch))
    for k in range(1, ranks + 1):
        share = dist.split_units(targets, k, ranks, whole)
        assert list(batches(share, batch)) == whole[k - 1::ranks]
