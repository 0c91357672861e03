"""Write a frozen fixture (run ONCE per format version, then never again).

    .venv/bin/python scripts/make_fixture.py               # tests/fixtures/artifact-1.0.h5 (format 1.0)
    .venv/bin/python scripts/make_fixture.py --version 1.1 # tests/fixtures/artifact-1.1.h5, every element
    .venv/bin/python scripts/make_fixture.py --version 1.2 # tests/fixtures/artifact-1.2.h5, every element, 5 channels
    .venv/bin/python scripts/make_fixture.py --version 1.3 # tests/fixtures/artifact-1.3.h5, + effects, faithfulness

The test suite opens these files forever to prove that today's reader still reads files written by the
writer of each version. Regenerating one would defeat that purpose: the script refuses if the file exists.
The 1.1 file is written by the real commands on tests/tinymodels.py's tiny_cnn (tests/fixture_builders.py).
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
sys.path.insert(0, TESTS)


def out_path(version: str) -> str:
    return os.path.join(TESTS, "fixtures", f"artifact-{version}.h5")


def make_1_0(out: str) -> None:
    from artifact_factory import make_artifact

    make_artifact(out, seed=0, command="make_fixture")


def make_1_1(out: str, **model) -> None:
    from fixture_builders import write_full_artifact

    from scopecli.cli import main

    def run(*args) -> int:
        try:
            main([str(a) for a in args])
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)

    with tempfile.TemporaryDirectory() as tmp:
        built = write_full_artifact(Path(tmp), run, **model)
        shutil.copy(built, out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.0", choices=["1.0", "1.1", "1.2", "1.3"])
    args = ap.parse_args()
    out = out_path(args.version)
    if os.path.exists(out):
        sys.exit(f"error: {out} exists; the {args.version} fixture is frozen and must not be regenerated")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if args.version == "1.3":  # every element of 1.1 on tiny_cnn, plus effects (with the ablation check) and faithfulness
        make_1_1(out, effects=True)
    elif args.version == "1.2":  # every element, on a 5-channel 16-bit model with channel names and a colour mapping
        from fixture_builders import FIVE

        make_1_1(out, **FIVE)
    else:
        (make_1_0 if args.version == "1.0" else make_1_1)(out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
