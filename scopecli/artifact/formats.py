"""The kinds of file scope writes, registered so `scope info` and `scope validate` read every one of them."""

from __future__ import annotations

import h5py

from scopecli.artifact import difffile, layout
from scopecli.artifact.h5io import attr_text, first_line
from scopecli.artifact.reader import check_scope_file, open_artifact
from scopecli.artifact.registry import FileFormat, file_format, register_file_format
from scopecli.artifact.report import info_report
from scopecli.artifact.validate import check_artifact
from scopecli.core.errors import ScopeError


def _artifact_info(path: str) -> dict:
    with open_artifact(path) as art:
        return art.info()


def _artifact_check(path: str, quick: bool) -> list[str]:
    return check_artifact(path, quick)


def _artifact_report(info: dict):
    return info_report(info)


ARTIFACT = register_file_format(FileFormat(
    name=layout.FORMAT_NAME, what="artifact", major=layout.FORMAT_MAJOR, minor=layout.FORMAT_MINOR,
    schema=f"artifact-{layout.FORMAT_VERSION}.json", check=_artifact_check, info=_artifact_info, report=_artifact_report,
))

DIFF = register_file_format(FileFormat(
    name=difffile.FORMAT_NAME, what="diff file", major=difffile.FORMAT_MAJOR, minor=difffile.FORMAT_MINOR,
    schema=f"diff-{difffile.FORMAT_VERSION}.json", check=difffile.check_diff, info=difffile.diff_info,
    report=difffile.diff_report,
))


def describe(path) -> tuple[FileFormat, dict]:
    """(format, `info` summary) of any scope file; a one-line error for anything else."""
    p = check_scope_file(path)
    try:
        with h5py.File(p, "r") as f:
            name = attr_text(f, "format", p)
    except OSError as exc:
        raise ScopeError(f"{p}: not a readable HDF5 file ({first_line(exc)}); it may be truncated or corrupt")
    fmt = file_format(name) or ARTIFACT  # anything else: the artifact reader says what is wrong
    return fmt, fmt.info(p)
