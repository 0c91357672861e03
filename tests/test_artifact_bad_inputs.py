"""Files from strangers: every bad input is one clear line (exit 2), `validate` lists problems (exit 1)."""

import h5py
import numpy as np
import pytest
from artifact_factory import make_artifact
from conftest import assert_one_line_error

from scopecli.artifact import open_artifact
from scopecli.artifact.layout import canonical_bytes_sha256
from scopecli.artifact.validate import validate
from scopecli.core.errors import ScopeError

CONV = "features.1/conv"
CONV_LINK = "features.1%2Fconv"


@pytest.fixture
def art_path(tmp_path):
    return make_artifact(tmp_path / "a.h5")


def _flip_byte_in(path, dataset: str, at: float = 0.5):
    """Flip one bit inside the stored bytes of `dataset` (first chunk, or contiguous data)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if ds.chunks:
            info = ds.id.get_chunk_info(0)
            off, size = info.byte_offset, info.size
        else:
            off, size = ds.id.get_offset(), ds.id.get_storage_size()
    assert off is not None and size > 0
    with open(path, "r+b") as fh:
        fh.seek(off + int(size * at))
        b = fh.read(1)
        fh.seek(off + int(size * at))
        fh.write(bytes([b[0] ^ 0x10]))


def _rewrite(path, dataset: str, values):
    """Replace a dataset's values in place and fix its sha256 (a consistent but hostile file)."""
    with h5py.File(path, "r+") as f:
        ds = f[dataset]
        ds[...] = values
        ds.attrs["sha256"] = canonical_bytes_sha256(ds[()])


def _check_validate_fails(scope_cli, path, contains: str):
    res = scope_cli("validate", path)
    assert_one_line_error(res, code=1, contains="problem")
    assert contains.lower() in res.stdout.lower(), res.stdout
    return res


def test_valid_file_validates(scope_cli, art_path):
    res = scope_cli("validate", art_path)
    assert res.code == 0 and res.stdout.startswith("valid") and res.stderr == ""
    res = scope_cli("validate", art_path, "--quick")
    assert res.code == 0 and "quick" in res.stdout
    res = scope_cli("info", art_path)
    assert res.code == 0 and "fakenet" in res.stdout and "head.fc" in res.stdout


def test_random_bytes(scope_cli, tmp_path):
    p = tmp_path / "noise.h5"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert_one_line_error(scope_cli("info", p), 2, "not a scope artifact")
    _check_validate_fails(scope_cli, p, "not an hdf5 file")


def test_truncated_file(scope_cli, art_path, tmp_path):
    data = open(art_path, "rb").read()
    p = tmp_path / "cut.h5"
    p.write_bytes(data[: len(data) // 2])
    assert_one_line_error(scope_cli("info", p), 2, "truncated")
    _check_validate_fails(scope_cli, p, "truncated")


def test_hdf5_that_is_not_an_artifact(scope_cli, tmp_path):
    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    assert_one_line_error(scope_cli("info", p), 2, "not a scope artifact")
    _check_validate_fails(scope_cli, p, "not a scope artifact")


def test_newer_major_version(scope_cli, art_path):
    with h5py.File(art_path, "r+") as f:
        f.attrs["format_version"] = "2.0"
    assert_one_line_error(scope_cli("info", art_path), 2, "upgrade scope")
    _check_validate_fails(scope_cli, art_path, "upgrade scope")


def test_newer_minor_version_reads(art_path, tmp_path):
    with h5py.File(art_path, "r+") as f:
        f.attrs["format_version"] = "1.7"
        f.create_group("future_section")  # optional content a newer minor may add
        f[f"layers/{CONV_LINK}/renders"]["future_column"] = np.arange(3)
    # a newer minor is read and validated (unknown extras are notes, not problems)
    with open_artifact(art_path) as art:
        assert art.format_version == "1.7" and art.unit(f"{CONV}:0").renders
    assert validate(art_path) == []
    # ... but this writer does not add to it (it could not describe it correctly)
    from artifact_factory import fake_model_info

    from scopecli.artifact import ArtifactWriter

    with pytest.raises(ScopeError, match="upgrade scope"):
        ArtifactWriter(art_path, fake_model_info(), "render", {}).open()


def test_unknown_required_feature(scope_cli, art_path):
    with h5py.File(art_path, "r+") as f:
        f.attrs["required_features"] = np.array(["layers", "holograms"], dtype=h5py.string_dtype())
    assert_one_line_error(scope_cli("info", art_path), 2, "holograms")


def test_missing_required_group(scope_cli, art_path):
    with h5py.File(art_path, "r+") as f:
        del f["provenance"]
    assert_one_line_error(scope_cli("info", art_path), 2, "missing group 'provenance'")
    _check_validate_fails(scope_cli, art_path, "missing group 'provenance'")


def test_bit_flip_inside_an_image(scope_cli, art_path):
    _flip_byte_in(art_path, f"layers/{CONV_LINK}/renders/blob")
    res = _check_validate_fails(scope_cli, art_path, "renders/blob")
    assert "checksum" in res.stdout
    # readers fail with a clear error too, instead of returning wrong pixels
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="corrupt"):
            for u in range(6):
                art.unit(f"{CONV}:{u}").renders[0].image


def test_bit_flip_inside_a_numeric_array(scope_cli, art_path):
    _flip_byte_in(art_path, f"layers/{CONV_LINK}/stats/mean")
    _check_validate_fails(scope_cli, art_path, "stats/mean")


def test_bit_flip_inside_strings_caught_by_sha256(scope_cli, art_path):
    with h5py.File(art_path, "r") as f:
        assert f["spec/text"].chunks is None  # contiguous, unfiltered: only sha256 protects it
    data = open(art_path, "rb").read()
    at = data.index(b"A scope artifact is one HDF5 file")  # inside the string heap of /spec/text
    with open(art_path, "r+b") as fh:
        fh.seek(at)
        fh.write(b"a")
    res = _check_validate_fails(scope_cli, art_path, "/spec/text")
    assert "sha256 mismatch" in res.stdout


def test_offsets_out_of_bounds(scope_cli, art_path):
    with h5py.File(art_path, "r") as f:
        off = f[f"layers/{CONV_LINK}/renders/offset"][()]
        size = f[f"layers/{CONV_LINK}/renders/blob"].shape[0]
    off[-1] = size - 1
    _rewrite(art_path, f"layers/{CONV_LINK}/renders/offset", off)
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="out of bounds"):
            art.unit(f"{CONV}:0")
        assert art.unit("head.fc:0").renders  # other layers still readable
    _check_validate_fails(scope_cli, art_path, "out of bounds")


def test_image_blob_that_is_not_png_or_jpeg(scope_cli, art_path):
    path = f"layers/{CONV_LINK}/examples/top/blob"
    with h5py.File(art_path, "r") as f:
        blob = f[path][()]
        ln = int(f[f"layers/{CONV_LINK}/examples/top/length"][0, 0])
    blob[:ln] = np.frombuffer((b"GIF89a" + b"\0" * ln)[:ln], np.uint8)
    _rewrite(art_path, path, blob)
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="not a PNG or JPEG"):
            art.unit(f"{CONV}:0").examples["top"][0].patch
    _check_validate_fails(scope_cli, art_path, "not a PNG or JPEG")


def test_declared_image_size_mismatch(art_path):
    p = f"layers/{CONV_LINK}/renders/height"
    with h5py.File(art_path, "r") as f:
        h = f[p][()]
    h[0] = 31
    _rewrite(art_path, p, h)
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="declares 32x31"):
            art.unit(f"{CONV}:0").renders[0].image
    assert any("declares 32x31" in x for x in validate(art_path))


def test_insane_declared_sizes(scope_cli, art_path):
    with h5py.File(art_path, "r+") as f:
        f[f"layers/{CONV_LINK}"].attrs["units"] = np.int64(1 << 40)
    assert_one_line_error(scope_cli("info", art_path), 2, "outside")


def test_huge_declared_dataset(art_path):
    with h5py.File(art_path, "r+") as f:
        g = f[f"layers/{CONV_LINK}/renders"]
        del g["traces"]
        ds = g.create_dataset("traces", shape=(1 << 40,), dtype=np.float32, chunks=(1 << 16,))
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "1.0"
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="beyond sane bounds"):
            art.unit(f"{CONV}:0")


def test_external_link_and_unknown_filter(scope_cli, art_path, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["secret"] = np.arange(3)
    with h5py.File(art_path, "r+") as f:
        f["layers/head.fc/evil"] = h5py.ExternalLink(str(other), "secret")
    assert_one_line_error(scope_cli("info", art_path), 2, "ExternalLink")
    _check_validate_fails(scope_cli, art_path, "ExternalLink")
    with h5py.File(art_path, "r+") as f:
        del f["layers/head.fc/evil"]
        g = f["layers/head.fc/stats"]
        data = g["mean"][()]
        del g["mean"]
        ds = g.create_dataset("mean", data=data, compression="lzf")
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "1.0"
        ds.attrs["sha256"] = canonical_bytes_sha256(data)
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="filter"):
            art.stats("head.fc")
    _check_validate_fails(scope_cli, art_path, "filter")


def test_path_is_a_directory_or_missing(scope_cli, tmp_path, art_path):
    assert_one_line_error(scope_cli("info", tmp_path), 2, "is a directory")
    assert_one_line_error(scope_cli("validate", tmp_path), 2, "is a directory")
    assert_one_line_error(scope_cli("info", tmp_path / "nope.h5"), 2, "no such file")
    assert_one_line_error(scope_cli("pack", art_path, "-o", tmp_path), 2, "is a directory")


def test_wrong_encoding_type_is_refused(scope_cli, art_path):
    with h5py.File(art_path, "r+") as f:
        f[f"layers/{CONV_LINK}/renders"].attrs["encoding-type"] = "scope.something-else"
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="encoding-type"):
            art.renders(CONV)
    _check_validate_fails(scope_cli, art_path, "encoding-type")


def test_declared_far_beyond_stored_bytes_refused(art_path):
    """A dataset that stores nothing (fill values) but declares 1 GiB must not be allocated."""
    with h5py.File(art_path, "r+") as f:
        g = f[f"layers/{CONV_LINK}/renders"]
        del g["traces"]
        ds = g.create_dataset("traces", shape=(1 << 28,), dtype=np.float32, chunks=(1 << 20,),
                              compression="gzip", fletcher32=True)
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "1.0"
        assert ds.id.get_storage_size() == 0
    with open_artifact(art_path) as art:
        with pytest.raises(ScopeError, match="stores only"):
            art.unit(f"{CONV}:0")
    assert any("stores only" in p for p in validate(art_path))
