"""How much memory does a read take? Peak RSS growth of a process over its baseline, from /proc (Linux).

The criterion of the fuzzer and of the memory regression tests: no read grows the reader's RSS by more than
1 GiB over what it holds after its imports. Measured with VmHWM, the kernel's peak RSS, reset to the current RSS
by writing "5" to /proc/PID/clear_refs (Linux >= 4.0), so a short spike between two looks is not missed; where
that reset does not work, VmRSS is polled instead.

    r = run_scope(["info", path], limit_mb=1024)   # scope in a subprocess, watched and killed past the limit
    r.code, r.stdout, r.stderr, r.growth_mb, r.killed
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Modules the read commands import on first use: imported before the baseline is taken, so that what is
# measured is the reading, not the first import of the code that reads.
WARM_MODULES = ("scopecli.cli", "scopecli.artifact", "scopecli.artifact.report", "scopecli.artifact.validate",
                "scopecli.compare.diff", "scopecli.compare.drawing", "scopecli.compare.show",
                "scopecli.compare.query", "scopecli.compare.report", "scopecli.export", "scopecli.core.progress")


def mem_kb(pid="self") -> dict:
    """{"VmRSS": KiB, "VmHWM": KiB (peak RSS since start or the last reset)}; {} when the process is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line[:5]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def reset_peak(pid="self") -> bool:
    """Reset VmHWM of a process (this one by default) to its current RSS."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_is_resettable() -> bool:
    """Whether VmHWM can be reset here: touch 64 MiB, free it, reset, and see the peak come down."""
    if not reset_peak():
        return False
    block = bytearray(64 << 20)
    block[::4096] = b"\x01" * len(range(0, 64 << 20, 4096))
    del block
    high = mem_kb().get("VmHWM", 0)
    reset_peak()
    after = mem_kb()
    return bool(after) and high - after.get("VmHWM", 0) > 32 << 10


def warm_imports() -> None:
    import importlib

    for mod in WARM_MODULES:
        try:
            importlib.import_module(mod)
        except Exception:
            pass


@dataclass
class Measured:
    code: int  # exit status (negative: killed by that signal)
    stdout: str
    stderr: str
    baseline_mb: float  # RSS after imports, before the command
    growth_mb: float  # peak RSS growth over the baseline while the command ran (a killed one: as far as it got)
    killed: str | None  # "memory" or "timeout" when the watcher killed it
    method: str


_CHILD = r"""
import os, sys
sys.path.insert(0, {tests!r})
import memwatch
memwatch.warm_imports()
resettable = memwatch.peak_is_resettable()
with open({report!r}, "w") as fh:
    fh.write(f"{{memwatch.mem_kb().get('VmRSS', 0)}} {{int(resettable)}}\n")
from scopecli.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
finally:
    sys.stdout.flush(); sys.stderr.flush()
    with open({report!r}, "a") as fh:
        fh.write(f"{{memwatch.mem_kb().get('VmHWM', 0)}}\n")
sys.exit(code)
"""


def run_scope(argv: list, limit_mb: float = 1024, timeout_s: float = 300, poll_s: float = 0.01) -> Measured:
    """`python -m scopecli ARGV` in a subprocess whose peak RSS growth over its post-import baseline is
    measured; killed (killed="memory") as soon as the growth passes limit_mb, or after timeout_s."""
    tests = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "mem")
        out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(tests=tests, report=report),
                                     *[str(a) for a in argv]], stdout=out, stderr=err, env=env)
        base_kb, resettable, peak_kb, killed = None, False, 0, None
        t0 = time.monotonic()
        while proc.poll() is None:
            if base_kb is None:
                try:
                    with open(report) as fh:
                        first = fh.readline().split()
                    if len(first) == 2:
                        base_kb, resettable = int(first[0]), first[1] == "1"
                except OSError:
                    pass
            mem = mem_kb(proc.pid)
            if base_kb is not None and mem:
                peak_kb = max(peak_kb, mem.get("VmHWM" if resettable else "VmRSS", 0))
                if peak_kb - base_kb > limit_mb * 1024:
                    killed = "memory"
            if time.monotonic() - t0 > timeout_s:
                killed = "timeout"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(poll_s)
        try:
            with open(report) as fh:
                lines = fh.read().split("\n")
            first = lines[0].split()
            base_kb, resettable = int(first[0]), first[1] == "1"
            if len(lines) > 1 and lines[1].strip():
                peak_kb = max(peak_kb, int(lines[1]))  # VmHWM as the command ended: its exact peak
        except (OSError, ValueError, IndexError):
            pass
        with open(out_path, errors="replace") as fh:
            stdout = fh.read()
        with open(err_path, errors="replace") as fh:
            stderr = fh.read()
    base_kb = base_kb or 0
    method = "VmHWM" if resettable else f"VmRSS polled every {poll_s * 1000:.0f} ms"
    return Measured(proc.returncode, stdout, stderr, base_kb / 1024, max(0, peak_kb - base_kb) / 1024 if base_kb else 0.0,
                    killed, method)
