"""The schema JSON, SPEC.md and what the writer writes agree; the frozen 1.0 fixture still opens."""

import os
import re
import shutil

import h5py
import numpy as np
from artifact_factory import make_artifact

from scopecli.artifact import open_artifact
from scopecli.artifact.layout import FORMAT_VERSION
from scopecli.artifact.validate import load_schema, validate
from scopecli.artifact.writer import spec_texts

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "artifact-1.0.h5")


def _schema_paths(schema: dict) -> dict[str, dict]:
    """Every element path the schema describes ('*' for any child), with its node."""
    defs = schema["definitions"]
    out = {}

    def walk(node, path):
        node = defs[node["$ref"]] if "$ref" in node else node
        out[path] = node
        for name, child in node.get("children", {}).items():
            walk(child, f"{path.rstrip('/')}/{name}")
        if "any_child" in node:
            walk(node["any_child"], f"{path.rstrip('/')}/*")

    walk(schema["root"], "/")
    return out


def _file_paths(path: str) -> dict[str, object]:
    """Every element of a file, with layer names and sketch entries generalized to '*'."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, _link):  # every link: a dataset hard-linked under two names counts under both
            obj = f[name]
            parts = name.split("/")
            if parts[0] == "layers" and len(parts) > 1:
                parts[1] = "*"
            if len(parts) > 4 and parts[3] == "sketch":
                parts[4] = "*"
            key = "/" + "/".join(parts)
            out.setdefault(key, "group" if isinstance(obj, h5py.Group) else str(obj.dtype))
        f.visititems_links(visit)
    out["/"] = "group"
    return out


def test_writer_writes_exactly_what_the_schema_describes(tmp_path):
    path = make_artifact(tmp_path / "full.h5", space=True, pixels=True)
    described = _schema_paths(load_schema())
    written = _file_paths(path)
    assert set(written) == set(described), (set(written) ^ set(described))
    for p, kind in written.items():
        assert (kind == "group") == (described[p]["kind"] == "group"), p
    # and the validator, which is driven by the schema, finds nothing wrong (strict: no extras allowed)
    assert validate(path) == []


def test_spec_md_documents_every_element_and_attribute():
    spec_md, spec_json = spec_texts()
    described = _schema_paths(load_schema())
    for path, node in described.items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf not in ("", "*"):
            assert f"`{leaf}" in spec_md or f"/{leaf}`" in spec_md, f"SPEC.md does not mention {path}"
        for attr in node.get("attrs", {}):
            assert f"`{attr}`" in spec_md, f"SPEC.md does not mention attribute {attr} of {path}"
        if "encoding-type" in node:
            assert node["encoding-type"] in spec_md, node["encoding-type"]
    assert re.search(rf"format {re.escape(FORMAT_VERSION)}", spec_md)  # the SPEC names the version it describes


def test_file_embeds_its_spec(tmp_path):
    path = make_artifact(tmp_path / "a.h5", collect=False)
    spec_md, spec_json = spec_texts()
    with open_artifact(path) as art:
        assert art.spec_text == spec_md
    with h5py.File(path, "r") as f:
        assert f["spec/schema"].asstr()[()] == spec_json
        assert f.attrs["format"] == "scope.artifact"
        # stock h5py reads an image straight from the byte array
        off, ln = int(f["layers/head.fc/renders/offset"][0]), int(f["layers/head.fc/renders/length"][0])
        assert f["layers/head.fc/renders/blob"][off:off + ln].tobytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_storage_rules(tmp_path):
    path = make_artifact(tmp_path / "a.h5")
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            assert re.fullmatch(r"[0-9a-f]{64}", obj.attrs["sha256"]), name
            assert obj.attrs["encoding-type"] and obj.attrs["encoding-version"] == "1.0"
            if obj.dtype.kind in "iuf" and obj.size:
                assert obj.chunks is not None and obj.fletcher32, name
                assert obj.compression in (None, "gzip"), name
            if name.endswith("/blob"):
                assert obj.compression is None and obj.dtype == np.uint8
        f.visititems(visit)
        # libver v110: superblock version 3 (HDF5 1.10 reads it)
        assert f.id.get_create_plist() is not None
    with open(path, "rb") as fh:
        head = fh.read(9)
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] in (2, 3)


def test_frozen_fixture_opens_and_validates(tmp_path):
    """tests/fixtures/artifact-1.0.h5 was written once by scripts/make_fixture.py; never regenerate it."""
    local = tmp_path / "fixture.h5"
    shutil.copy(FIXTURE, local)
    assert validate(local) == []
    with open_artifact(local) as art:
        assert art.format_version == "1.0"
        assert art.layers == ["features.1/conv", "head.fc"]
        assert art.model["architecture"] == "FakeNet"
        u = art.unit("features.1/conv:2")
        assert u.renders[0].image.shape == (32, 32, 3) and u.renders[0].objective == "channel"
        assert len(u.examples["top"]) == 4 and u.examples["top"][0].patch.shape == (16, 16, 3)
        assert u.stats["count"] == 100
        assert art.probe("head.fc").acts.shape == (3, 4)
        assert len(art.dataset) == 12 and art.dataset.class_names[2] == "ünïcode"
        # pixel-exact: PNG is lossless, so the decoded render hashes to what the 1.0 writer stored
        import hashlib

        digest = hashlib.sha256(u.renders[0].image.tobytes()).hexdigest()
        assert digest == "8d792a0d16b78f3c894e7488cee86f2ed3f0f473740feef754ee95c69643ba9e"
