"""Unit spaces (`scope decompose`, layers `BASE@SPACE`): fits against references, the model side against
independently captured activations, every command on space units, imports, and the bad inputs."""

import json

import numpy as np
import pytest
import torch

from collect_builders import noise_images
from conftest import assert_one_line_error
from scopecli.artifact import ArtifactWriter, open_artifact
from scopecli.core.records import ActivationSample, LayerLayout, LayerRecord
from scopecli.jobs.spaces import decompose
from scopecli.spaces.data import split_rows

SIZE = 32
LAYERS = ["blocks.1", "blocks.2"]
CLASSES = ["ant", "bee", "cow"]
N_IMAGES = 100  # query --like needs 100 shared probe images


def _model():
    from scopecli.model import resolve_model

    return resolve_model("tinymodels:tiny_resnet", input_size=SIZE)


def _settings(**kw):
    from scopecli.collect import CollectSettings

    base = dict(top_k=4, bottom_k=2, patch_size=16, probe=N_IMAGES, batch=25, workers=0, device="cpu", sample=600, seed=1)
    return CollectSettings(**(base | kw))


@pytest.fixture(scope="module")
def spaced(tmp_path_factory):
    """An artifact of tiny_resnet on 100 labelled noise images, with a PCA space on blocks.1 and a TopK SAE on
    blocks.2, both collected."""
    from scopecli.collect import open_source
    from scopecli.jobs.collect import run_collect

    root = tmp_path_factory.mktemp("spaces")
    data = root / "data"
    noise_images(data, N_IMAGES, SIZE, seed=3)
    labels = root / "labels.tsv"
    labels.write_text("".join(f"img_{i:03d}.png\t{CLASSES[i % 3]}\n" for i in range(N_IMAGES)))
    path = str(root / "a.h5")
    loaded = _model()
    run_collect(loaded, open_source(data, labels=labels), LAYERS, _settings(), output=path, quiet=True)
    pca = decompose(path, "blocks.1", "pca", 4)
    sae = decompose(path, "blocks.2", "sae", 24, k_active=3, seed=2)
    run_collect(_model(), open_source(data, labels=labels), ["blocks.1@pca4", "blocks.2@sae24"], _settings(sample=0),
                output=path, quiet=True)
    return {"path": path, "data": data, "labels": labels, "root": root, "pca": pca, "sae": sae}


def _sample_artifact(path, vectors: np.ndarray, grid=(4, 4), name="feat"):
    """An artifact whose layer `name` holds exactly these sample rows (float16) and nothing collected else."""
    from artifact_factory import fake_image_table, fake_model_info

    n, c = vectors.shape
    rec = LayerRecord(name=name, units=c, shape=(c, *grid), rf_size=3, rf_stride=1, rf_start=0,
                      layout=LayerLayout("nchw", (0, 1, 2, 3), grid))
    table = fake_image_table(4)
    s = ActivationSample(keys=np.arange(n, dtype=np.uint64), vectors16=vectors.astype(np.float16),
                         image_index=np.arange(n, dtype=np.int64) % 4,
                         positions=np.stack([np.arange(n) % grid[0], np.arange(n) // grid[0] % grid[1]], 1).astype(np.int32),
                         seed=0, size=n, population=n)
    with ArtifactWriter(path, fake_model_info(), "test") as w:
        w.ensure_layer(rec)
        w.set_dataset(table)
        w.put(name, "sample", s)
    return str(path)


# ------------------------------------------------------------------------------------------------ fits


def test_pca_directions_equal_numpy_svd_up_to_sign(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 3).astype(np.float16)
    path = _sample_artifact(tmp_path / "p.h5", x)
    res = decompose(path, "feat", "pca", 3)
    fit, valid = split_rows(len(x))
    xf = x.astype(np.float64)[fit]
    _, s, vt = np.linalg.svd(xf - xf.mean(0), full_matrices=False)
    with open_artifact(path) as art:
        sp = art.space("feat@pca3")
        assert art.space("pca3").encoder.shape == (3, 6)  # the bare name works when unambiguous
        assert art.spaces == [{"name": "feat@pca3", "base": "feat", "space": "pca3", "method": "pca", "k": 3,
                               "nonlinearity": "none", "quality": sp.quality}]
        for i in range(3):
            np.testing.assert_allclose(np.abs(sp.encoder[i] @ vt[i]), 1.0, atol=1e-5)
        np.testing.assert_allclose(sp.decoder, sp.encoder)
        np.testing.assert_allclose(sp.pre_bias, xf.mean(0), atol=1e-4)
        assert sp.nonlinearity == "none" and sp.method == "pca" and len(sp.data_sha256) == 64
        assert sp.quality["explained_variance"] == pytest.approx((s[:3] ** 2).sum() / (s ** 2).sum(), rel=1e-5)
        # held-out R² is the projection's, measured on the rows the fit did not see
        xv = x.astype(np.float64)[valid]
        proj = (xv - xf.mean(0)) @ vt[:3].T @ vt[:3] + xf.mean(0)
        r2 = 1 - ((xv - proj) ** 2).sum() / ((xv - xf.mean(0)) ** 2).sum()
        assert sp.quality["r2"] == pytest.approx(r2, abs=1e-4) and res["quality"]["r2"] == pytest.approx(r2, abs=1e-4)
        assert art.layer("feat@pca3").units == 3 and art.layer("feat@pca3").shape == (3, 4, 4)
    from scopecli.artifact.validate import validate

    assert validate(path) == []


def test_sae_recovers_a_planted_sparse_dictionary(tmp_path):
    rng = np.random.default_rng(0)
    c, atoms, active, n = 24, 16, 2, 8000
    d = rng.normal(size=(atoms, c))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    z = np.zeros((n, atoms))
    for i in range(n):
        z[i, rng.choice(atoms, active, replace=False)] = rng.uniform(0.5, 2.0, active)
    x = z @ d + 0.01 * rng.normal(size=(n, c)) + 0.3
    path = _sample_artifact(tmp_path / "s.h5", x)
    res = decompose(path, "feat", "sae", 2 * atoms, k_active=active, seed=1)
    with open_artifact(path) as art:
        sp = art.space("feat@sae32")
    learned = sp.decoder / np.linalg.norm(sp.decoder, axis=1, keepdims=True)
    best = np.abs(d @ learned.T).max(axis=1)
    assert (best > 0.9).mean() >= 0.85, np.sort(best)
    assert sp.nonlinearity == "topk" and sp.k_active == active and res["quality"]["r2"] > 0.9
    assert sp.params["epochs"] >= sp.params["best_epoch"] >= 1
    # the stored encoder, in the data's units, reconstructs the rows (fold-back of the standardisation is right)
    xv = x[split_rows(n)[1]]
    assert 1 - ((xv - sp.decode(sp.encode(xv))) ** 2).sum() / ((xv - xv.mean(0)) ** 2).sum() > 0.9


def test_nmf_refuses_negative_layers_and_shifts_when_asked(tmp_path):
    rng = np.random.default_rng(1)
    basis = np.abs(rng.normal(size=(3, 8)))
    x = np.abs(rng.normal(size=(300, 3))) @ basis - 0.5  # non-negative data shifted by -0.5: negative values
    path = _sample_artifact(tmp_path / "n.h5", x)
    from scopecli.core.errors import ScopeError

    with pytest.raises(ScopeError, match="non-negative.*--shift"):
        decompose(path, "feat", "nmf", 3)
    decompose(path, "feat", "nmf", 3, shift=True)
    with open_artifact(path) as art:
        sp = art.space("feat@nmf3")
    xf = x.astype(np.float16).astype(np.float64)[split_rows(300)[0]]
    np.testing.assert_allclose(sp.pre_bias, xf.min(0), atol=1e-6)  # the stated rule: each channel's minimum
    assert (sp.decoder >= 0).all() and np.allclose(np.linalg.norm(sp.decoder, axis=1), 1, atol=1e-5)
    assert sp.nonlinearity == "relu" and "pseudo-inverse" in sp.note
    assert sp.quality["r2_nnls"] > 0.99 and sp.quality["r2"] > 0.5  # a rank-3 non-negative layer, found


# ------------------------------------------------------------------------------------------------ model side


U32 = 2.0**-24  # float32 unit roundoff


def _encode_envelope(sp, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(z_lo, z_hi, tol) [N, k, H, W]: collect's float32 torch encoding of activations `a` (N, C, H, W) lies in
    [z_lo - tol, z_hi + tol] on any CPU, where the float64 encoding gives z.

    tol: a float32 dot of n terms errs by at most n*u/(1-n*u) * sum|terms| in any order (Higham 2002, 3.1),
    here n = C + 2 (the channels, the pre-bias subtraction, the bias) and the terms |enc|(|x| + |pre_bias|) +
    |bias|; ReLU passes no more. TopK also picks latents: one within 2 tol of the k-th/(k+1)-th boundary may
    be kept or dropped (there z_lo has 0 and z_hi its value); every other latent is picked alike."""
    n_img, c, h, w = a.shape
    rows = a.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float64)
    n = c + 2
    g = n * U32 / (1 - n * U32)
    tol = float((g * ((np.abs(rows) + np.abs(sp.pre_bias)) @ np.abs(sp.encoder.astype(np.float64)).T
                      + np.abs(sp.bias))).max())
    z = sp.encode(rows)
    lo, hi = z.copy(), z.copy()
    if sp.nonlinearity == "topk" and sp.k_active < sp.k:
        pre = sp.pre_activations(rows)
        srt = -np.sort(-pre, axis=1)
        kth, next_ = srt[:, sp.k_active - 1:sp.k_active], srt[:, sp.k_active:sp.k_active + 1]
        unsure = (pre <= next_ + 2 * tol) & (pre >= kth - 2 * tol)
        lo[unsure] = 0.0
        hi[unsure] = np.maximum(pre[unsure], 0.0)

    def grid(v):
        return v.reshape(n_img, h, w, sp.k).transpose(0, 3, 1, 2)

    return grid(lo), grid(hi), tol


def test_collect_of_a_space_equals_the_encoder_on_captured_activations(spaced):
    from PIL import Image

    loaded = _model()
    files = sorted(spaced["data"].glob("*.png"))
    to_tensor = loaded.preprocess.pil_transform()  # the same resize and crop as collect
    x = loaded.preprocess.normalize(torch.stack([to_tensor(Image.open(f).convert("RGB")) for f in files]))
    with torch.no_grad(), open_artifact(spaced["path"]) as art:
        from scopecli.model.capture import capture

        # the network as collect ran it: the same inputs in its batches of 25 on one thread (conftest), one
        # deterministic computation twice; one batch of 100 would let oneDNN pick other kernels and round
        # otherwise on another CPU. The encoding differs (float32 torch there, float64 numpy here): bounded.
        parts = [capture(loaded.module, x[i:i + 25], LAYERS) for i in range(0, len(x), 25)]
        acts = {layer: torch.cat([p[layer] for p in parts]) for layer in LAYERS}
        for layer, space_name in (("blocks.1", "blocks.1@pca4"), ("blocks.2", "blocks.2@sae24")):
            sp = art.space(space_name)
            a = acts[layer].numpy()  # (N, C, H, W)
            n, c, h, w = a.shape
            z_lo, z_hi, tol = _encode_envelope(sp, a)
            assert tol < 1e-3 * np.abs(z_hi).max(), tol  # far below the values: the checks below mean something
            assert (z_lo != z_hi).mean() < 1e-3  # near-ties at the TopK boundary are rare
            top = art.examples(space_name, "top")
            max_lo, max_hi = z_lo.reshape(n, sp.k, -1).max(axis=2), z_hi.reshape(n, sp.k, -1).max(axis=2)
            for row, u in enumerate(top.units):
                ii = top.image_index[row]
                ok = ii >= 0
                assert (top.score[row][ok] >= max_lo[ii[ok], u] - tol).all(), (space_name, u)
                assert (top.score[row][ok] <= max_hi[ii[ok], u] + tol).all(), (space_name, u)
                assert max_lo[:, u].max() - tol <= top.score[row][0] <= max_hi[:, u].max() + tol
            st = art.stats(space_name)
            lo_units, hi_units = (v.transpose(1, 0, 2, 3).reshape(sp.k, -1) for v in (z_lo, z_hi))
            # the mean adds its per-image float32 sums over h*w positions: h*w*u*max|z| more
            slack = tol + h * w * U32 * (np.abs(z_hi).max() + tol)
            assert (lo_units.mean(1) - slack <= st.mean).all() and (st.mean <= hi_units.mean(1) + slack).all()
            assert (lo_units.max(1) - tol <= st.max).all() and (st.max <= hi_units.max(1) + tol).all()
            probe = art.probe(space_name)
            got = probe.acts.astype(np.float64)
            for v, sign in ((z_lo, -1), (z_hi, 1)):  # float16 storage: 2^-11 relative, 2e-3 leaves 4x
                bound = v.reshape(n, sp.k, -1).mean(2)[probe.image_index]
                assert (sign * (got - bound) <= 2e-3 + 2e-3 * np.abs(bound) + slack).all(), space_name
            assert art.layer(space_name).shape == (sp.k, h, w)
            # the unit view: a space unit reads like a channel, and says its direction
            u = art.unit(f"{space_name}:1")
            assert float(z_lo[:, 1].max()) - tol <= u.stats["max"] <= float(z_hi[:, 1].max()) + tol
            np.testing.assert_array_equal(u.direction, sp.decoder[1])
            assert art.unit("blocks.1:0").direction is None


def test_render_raises_a_space_unit(spaced, tmp_path):
    import shutil

    from scopecli.render import RenderSettings
    from scopecli.jobs.render import plan_render, run_render

    path = str(tmp_path / "r.h5")
    shutil.copy(spaced["path"], path)
    loaded = _model()
    settings = RenderSettings(steps=48, size=SIZE, lr=0.05, batch=4, seed=0, device="cpu")
    for objective in ("channel", "direction"):
        plan = plan_render(loaded, ["blocks.1@pca4"], "0,1", objective, 1, settings, spaces_from=path)
        run_render(loaded, plan, path)
    with open_artifact(path) as art:
        sp = art.space("blocks.1@pca4")
        for r in art.renders("blocks.1@pca4"):
            assert r.act_trace[-1] > r.act_trace[0] + 1e-3, (r.objective, r.act_trace)
            # act_final is z_i (channel: mean over positions) of the rendered image, computed independently
            with torch.no_grad():
                img = torch.from_numpy(np.array(r.image)).permute(2, 0, 1)[None].float() / 255.0
                a = loaded.module.blocks[1](loaded.module.blocks[0](torch.relu(
                    loaded.module.stem(loaded.preprocess.normalize(img))))).numpy()
            xs = a[0].reshape(a.shape[1], -1).T
            if r.objective == "channel":
                want = sp.encode(xs)[:, r.unit].mean()
            else:
                want = ((xs - sp.pre_bias) @ sp.decoder[r.unit]).mean()
            assert r.act_final == pytest.approx(want, abs=0.02 * max(1.0, abs(want)))  # the PNG is 8-bit


def test_sparse_latents_get_a_gradient_while_rendering():
    """A TopK latent outside the top k has a zero true gradient; rendering gets the pre-activation's
    (straight-through), while the values stay exactly the space's."""
    from scopecli.model.spaces import BoundSpace
    from scopecli.core.records import UnitSpace

    rng = np.random.default_rng(0)
    enc = rng.normal(size=(5, 4)).astype(np.float32)
    space = UnitSpace("l", "s", enc, rng.normal(size=4).astype(np.float32), rng.normal(size=5).astype(np.float32),
                      enc.copy(), "topk", 1)
    bound = BoundSpace(space, LayerLayout("nchw", (0, 1, 2, 3), (2, 3)))
    x = torch.from_numpy(rng.normal(size=(2, 4, 2, 3)).astype(np.float32))
    with torch.no_grad():
        z0 = bound.encode(x)
    want = space.encode(x.numpy().transpose(0, 2, 3, 1).reshape(-1, 4)).reshape(2, 2, 3, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(z0.numpy(), want, atol=1e-5)
    dead = int(np.flatnonzero((want == 0).all(axis=(0, 2, 3)))[0])  # a latent never in the top 1 here
    xg = x.clone().requires_grad_(True)
    z = bound.encode(xg)
    np.testing.assert_allclose(z.detach().numpy(), want, atol=1e-5)  # same values with gradients on
    (g,) = torch.autograd.grad(z[:, dead].sum(), xg)
    np.testing.assert_allclose(g.numpy(), np.broadcast_to(enc[dead][None, :, None, None], g.shape), atol=1e-6)


def test_space_must_exist_in_the_output_artifact(spaced, tmp_path, scope_cli):
    r = scope_cli("render", "tinymodels:tiny_resnet", "--input-size", SIZE, "-l", "blocks.1@nope", "--steps", 2,
                  "-o", spaced["path"], "--quiet")
    assert_one_line_error(r, contains="no unit space blocks.1@nope")
    r = scope_cli("collect", "tinymodels:tiny_resnet", "--input-size", SIZE, "--data", spaced["data"],
                  "-l", "blocks.1@pca4", "-o", tmp_path / "new.h5", "--quiet", "--workers", 0)
    assert_one_line_error(r, contains="does not exist")
    r = scope_cli("render", "tinymodels:tiny_resnet", "--input-size", SIZE, "-l", "blocks.1", "--objective",
                  "direction", "--steps", 2, "-o", tmp_path / "x.h5", "--quiet")
    assert_one_line_error(r, contains="unit space")


# ------------------------------------------------------------------------------------------------ commands


def test_show_query_diff_export_accept_space_units(spaced, tmp_path, scope_cli):
    path = spaced["path"]
    r = scope_cli("show", path, "blocks.2@sae24:0", "--json")
    assert r.code == 0, r.stderr
    card = json.loads(r.stdout)
    assert card["layer"] == "blocks.2@sae24" and card["units_in_layer"] == 24
    assert card["space"]["method"] == "sae" and card["space"]["base"] == "blocks.2"
    assert len(card["space"]["direction_channels"]) == 5 and card["examples"]["top"]
    r = scope_cli("show", path, "blocks.1@pca4:2")
    assert r.code == 0 and "unit space pca4 on blocks.1" in r.stdout
    r = scope_cli("show", path, "blocks.1@pca4:2", "-o", tmp_path / "card.png")
    assert r.code == 0 and (tmp_path / "card.png").stat().st_size > 0

    r = scope_cli("query", path, "--label", "bee", "--layer", "blocks.2@sae24", "--json")
    assert r.code == 0, r.stderr
    hits = json.loads(r.stdout)
    assert hits and all(h["layer"] == "blocks.2@sae24" for h in hits)
    r = scope_cli("query", path, "--like", f"{path}:blocks.2@sae24:0", "--json", "--top", 50)
    assert r.code == 0, r.stderr
    hits = json.loads(r.stdout)
    assert {h["layer"] for h in hits} >= {"blocks.1", "blocks.1@pca4", "blocks.2"}
    assert ("blocks.2@sae24", 0) not in {(h["layer"], h["unit"]) for h in hits}  # the unit itself is no answer
    with open_artifact(path) as art:  # the score is the correlation of the probe activations
        ref = art.probe("blocks.2@sae24").acts[:, 0].astype(np.float64)
        got = art.probe(hits[0]["layer"]).acts[:, hits[0]["unit"]].astype(np.float64)
    assert hits[0]["score"] == pytest.approx(np.corrcoef(ref, got)[0, 1], abs=1e-4)

    r = scope_cli("diff", path, path, "--layers", "blocks.1,blocks.1@pca4,blocks.2@sae24", "--layers-b",
                  "blocks.2,blocks.2@sae24", "--pair", "blocks.1@pca4=blocks.2@sae24", "--permutations", 3, "--json",
                  "--quiet")
    assert r.code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["layers_a"] == ["blocks.1", "blocks.1@pca4", "blocks.2@sae24"]
    i, j = d["layers_a"].index("blocks.2@sae24"), d["layers_b"].index("blocks.2@sae24")
    assert d["cka_linear"][i][j] == pytest.approx(1.0, abs=1e-6)
    assert d["unit_matching"][0]["layer_a"] == "blocks.1@pca4" and d["unit_matching"][0]["layer_b"] == "blocks.2@sae24"
    rows = {row["layer"]: row for row in d["spaces"]["a"]}
    assert rows["blocks.1@pca4"]["kind"] == "pca" and rows["blocks.1"]["kind"] == "channels"
    assert rows["blocks.1@pca4"]["r2"] == pytest.approx(spaced["pca"]["quality"]["r2"], abs=1e-6)
    assert rows["blocks.2@sae24"]["purity"]["units"] == 24
    r = scope_cli("diff", path, path, "--layers", "blocks.2,blocks.2@sae24", "--permutations", 2, "--quiet")
    assert r.code == 0 and "channels" in r.stdout and "sae" in r.stdout and "0/24" in r.stdout

    site = tmp_path / "site"
    r = scope_cli("export", path, "-o", site, "--quiet")
    assert r.code == 0, r.stderr
    model_dir = next((site / "m").iterdir())
    base_page = next(model_dir.glob("*-blocks.2")) / "index.html"
    space_dir = next(model_dir.glob("*-blocks.2-sae24"))
    html = base_page.read_text()
    assert f'href="../{space_dir.name}/index.html"' in html and "unit spaces on this layer" in html
    page = (space_dir / "index.html").read_text()
    assert "unit space on" in page and f'href="../{base_page.parent.name}/index.html"' in page
    assert (space_dir / "u" / "0.html").exists()


def test_info_validate_and_pack_keep_spaces(spaced, tmp_path, scope_cli):
    from scopecli.artifact.validate import validate

    assert validate(spaced["path"]) == []
    r = scope_cli("info", spaced["path"], "--json")
    layers = {row["name"]: row for row in json.loads(r.stdout)["layers"]}
    assert layers["blocks.2@sae24"]["space"]["method"] == "sae" and "space" not in layers["blocks.2"]
    r = scope_cli("pack", spaced["path"], "-o", tmp_path / "p.h5", "--quiet")
    assert r.code == 0, r.stderr
    with open_artifact(spaced["path"]) as a, open_artifact(tmp_path / "p.h5") as b:
        for name in ("blocks.1@pca4", "blocks.2@sae24"):
            np.testing.assert_array_equal(a.space(name).encoder, b.space(name).encoder)
            assert a.space(name).quality == b.space(name).quality


def test_decompose_data_collects_the_new_space_at_once(spaced, tmp_path, scope_cli):
    import shutil

    path = tmp_path / "d.h5"
    shutil.copy(spaced["path"], path)
    r = scope_cli("decompose", path, "--layer", "blocks.1", "--method", "pca", "--k", 3, "--data", spaced["data"],
                  "--json", "--quiet")
    assert_one_line_error(r, contains="--labels")  # the artifact's labels would be dropped
    r = scope_cli("decompose", path, "--layer", "blocks.1", "--method", "pca", "--k", 3, "--data", spaced["data"],
                  "--labels", spaced["labels"], "--json", "--quiet")
    assert r.code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["layer"] == "blocks.1@pca3" and res["collected"]["layers"] == ["blocks.1@pca3"]
    with open_artifact(path) as art:
        assert art.examples("blocks.1@pca3", "top").score.shape == (3, 4)  # the last collect's --top-k 4
        assert art.image_labels()[1] == CLASSES


# ------------------------------------------------------------------------------------------------ imports


def _sae_weights(c, k, seed=0):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(c, k)).astype(np.float32), "b_enc": rng.normal(size=k).astype(np.float32),
            "W_dec": rng.normal(size=(k, c)).astype(np.float32), "b_dec": rng.normal(size=c).astype(np.float32)}


def test_imported_safetensors_sae_round_trips(spaced, tmp_path, scope_cli):
    import shutil

    from safetensors.numpy import save_file

    path = tmp_path / "i.h5"
    shutil.copy(spaced["path"], path)
    w = _sae_weights(16, 40)
    save_file(w, str(tmp_path / "sae.safetensors"))
    np.savez(tmp_path / "saev.npz", **w)
    r = scope_cli("decompose", path, "--layer", "blocks.2", "--from", tmp_path / "sae.safetensors", "--json", "--quiet")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["layer"] == "blocks.2@sae"
    r = scope_cli("decompose", path, "--layer", "blocks.2", "--from", tmp_path / "saev.npz", "--no-subtract-b-dec",
                  "--nonlinearity", "topk", "--k-active", 5, "--quiet")
    assert r.code == 0, r.stderr
    np.save(tmp_path / "dirs.npy", w["W_dec"][:6])
    assert scope_cli("decompose", path, "--layer", "blocks.2", "--from", tmp_path / "dirs.npy", "--quiet").code == 0
    x = np.random.default_rng(3).normal(size=(7, 16))
    with open_artifact(path) as art:
        sp = art.space("blocks.2@sae")
        np.testing.assert_array_equal(sp.encoder, w["W_enc"].T)
        np.testing.assert_array_equal(sp.decoder, w["W_dec"])
        np.testing.assert_array_equal(sp.pre_bias, w["b_dec"])
        np.testing.assert_array_equal(sp.bias, w["b_enc"])
        assert sp.method == "import" and sp.nonlinearity == "relu" and "W_enc^T" in sp.params["mapping"]
        np.testing.assert_allclose(sp.encode(x), np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(sp.decode(sp.encode(x)), np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
                                   @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-4)
        assert sp.quality["evaluated_on"].startswith("the whole activation sample")
        # saev encodes x itself: the same function through a folded float32 bias (rounding ~1e-5 here, so 1e-4;
        # the 5th and 6th pre-activations of these seeded rows lie >= 0.047 apart, so TopK picks alike anywhere)
        saev = art.space("saev")
        h = x @ w["W_enc"] + w["b_enc"]
        keep = np.argsort(-h, axis=1)[:, :5]
        want = np.zeros_like(h)
        np.put_along_axis(want, keep, np.maximum(np.take_along_axis(h, keep, 1), 0), 1)
        np.testing.assert_allclose(saev.encode(x), want, rtol=1e-4, atol=1e-4)
        dirs = art.space("dirs")
        np.testing.assert_array_equal(dirs.decoder, w["W_dec"][:6])
        np.testing.assert_array_equal(dirs.encoder, w["W_dec"][:6])


# ------------------------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_are_one_line(spaced, tmp_path, scope_cli):
    import pickle
    import shutil

    from safetensors.numpy import save_file

    path = tmp_path / "b.h5"
    shutil.copy(spaced["path"], path)
    before = path.read_bytes()

    def err(*args, contains):
        assert_one_line_error(scope_cli("decompose", path, *args, "--quiet"), contains=contains)

    err("--layer", "blocks.1", "--method", "pca", "--k", 17, contains="at most 16")  # K beyond the sample / width
    err("--layer", "blocks.2", "--method", "sae", "--k", 100000, contains="sample rows")
    err("--layer", "blocks.1@pca4", "--method", "pca", "--k", 2, contains="itself a unit space")
    err("--layer", "blocks.1", "--method", "pca", "--k", 4, contains="already holds layer blocks.1@pca4")  # clash
    err("--layer", "blocks.1", "--method", "pca", "--k", 4, "--name", "bad name", contains="space name")
    err("--layer", "blocks.1", "--method", "ica", "--k", 4, contains="--method")
    signed = _sample_artifact(tmp_path / "signed.h5", np.random.default_rng(0).normal(size=(100, 5)))
    r = scope_cli("decompose", signed, "--layer", "feat", "--method", "nmf", "--k", 2, "--quiet")
    assert_one_line_error(r, contains="non-negative")  # NMF on signed activations: refused, --shift suggested
    assert "--shift" in r.stderr
    save_file(_sae_weights(8, 10), str(tmp_path / "narrow.safetensors"))
    err("--layer", "blocks.2", "--from", tmp_path / "narrow.safetensors", contains="16 channels")  # width mismatch
    w = _sae_weights(16, 10)
    w["W_dec"][2, 3] = np.nan
    np.savez(tmp_path / "nan.npz", **w)
    err("--layer", "blocks.2", "--from", tmp_path / "nan.npz", contains="NaN")
    (tmp_path / "sae.pt").write_bytes(pickle.dumps({"W_enc": [1.0]}))
    err("--layer", "blocks.2", "--from", tmp_path / "sae.pt", contains="pickle")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    err("--layer", "blocks.2", "--from", tmp_path / "obj.npy", contains="pickle")
    assert path.read_bytes() == before  # nothing was written

    # a layer without a sample: one line naming the command that makes one
    from artifact_factory import fake_model_info, make_artifact

    from scopecli.artifact.elements.sample import SampleStage

    plain = make_artifact(tmp_path / "plain.h5", renders=False)
    with open_artifact(plain) as art:
        layer = art.layers[0]
    with ArtifactWriter(plain, fake_model_info(), "strip") as wr:
        wr.replace(layer, "sample", SampleStage())
    r = scope_cli("decompose", plain, "--layer", layer, "--method", "pca", "--k", 2, "--quiet")
    assert_one_line_error(r, contains="scope collect --sample N")


# ------------------------------------------------------------------------------------------------ names, purity


def test_space_layer_names():
    from scopecli.core.errors import ScopeError
    from scopecli.core.units import parse_unit_address, space_layer, split_space

    assert split_space("_blocks.14@sae256") == ("_blocks.14", "sae256")
    assert split_space("layer4.2") == ("layer4.2", None)
    assert space_layer("layer4.2", "pca-32_b") == "layer4.2@pca-32_b"
    assert parse_unit_address("_blocks.14@sae256:17") == ("_blocks.14@sae256", 17)
    for bad in ("@sae", "x@", "x@a b", "x@" + "a" * 65):
        with pytest.raises(ScopeError):
            split_space(bad)
    with pytest.raises(ScopeError, match="itself a unit space"):
        space_layer("a@b", "c")


def test_purity_counts_only_firing_examples_and_leaves_rare_units_out():
    from scopecli.artifact.elements.strongest import lift_score
    from scopecli.compare.monosemanticity import unit_purity

    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, -1, 0])
    base = np.bincount(labels[labels >= 0], minlength=3) / (labels >= 0).sum()
    images = np.array([0, 1, 6, 9, 11, 2, 10, 3])
    scores = np.array([9, 8, 7, 6, 5, 4, 3, 0.0])  # the last is at the threshold: not firing
    purity, lift = unit_purity(labels, base, images, scores, threshold=0.0)
    # firing, labelled: images 0,1,6,9,11 (class 0), 2 (class 1); image 10 is unlabelled
    assert purity == pytest.approx(5 / 6)
    assert lift == pytest.approx(lift_score(5, 6, float(base[0])))
    assert unit_purity(labels, base, images, np.array([5, 4, 3, 0, 0, 0, 0, 0.0]), 0.0) is None  # 3 firing < 4


def test_monosemanticity_script_reports_neurons_and_spaces(spaced, capsys):
    import importlib.util
    import pathlib

    from scopecli.compare.monosemanticity import layer_purity

    script = pathlib.Path(__file__).parent.parent / "scripts" / "monosemanticity.py"
    spec = importlib.util.spec_from_file_location("monosemanticity", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([spaced["path"], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["kind"]) for r in rows] == [("blocks.1", "neurons"), ("blocks.1@pca4", "pca"),
                                                       ("blocks.2", "neurons"), ("blocks.2@sae24", "sae")]
    with open_artifact(spaced["path"]) as art:
        for r in rows:
            want = layer_purity(art, r["layer"])
            assert r["median_purity"] == pytest.approx(want.median_purity, nan_ok=True)
            assert r["counted"] + r["left_out"] == r["units"] == art.layer(r["layer"]).units
    # other labels than the collected ones: one superclass for every image makes every counted unit pure
    one = spaced["root"] / "one.tsv"
    one.write_text("".join(f"img_{i:03d}.png\tthing\n" for i in range(N_IMAGES)))
    assert mod.main([spaced["path"], "--labels", str(one), "--json"]) == 0
    for r in json.loads(capsys.readouterr().out):
        assert r["median_purity"] == 1.0 and r["median_lift"] == pytest.approx(1.0)
