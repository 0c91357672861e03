import os
import sys
from dataclasses import dataclass

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # tinymodels, artifact_factory

# Tests are small; one thread avoids oversubscription on shared CPUs. Tests depend on it: test_resume
# compares renders made in this process bit for bit with ones from OMP_NUM_THREADS=1
# subprocesses (oneDNN may round differently with another thread count), so keep the two the same.
torch.set_num_threads(1)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def scope_cli(capsys):
    """Run `scope ARGS...` in-process through the real entry point; returns code, stdout, stderr."""
    from scopecli.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def assert_one_line_error(result: CliResult, code: int = 2, contains: str | None = None):
    """Bad input: the given exit code, exactly one line on stderr starting with 'error:', no traceback."""
    assert result.code == code, (result.code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    if contains:
        assert contains.lower() in lines[0].lower(), lines[0]
