"""Write the frozen format-1.0 fixture `tests/fixtures/artifact-1.0.h5` (run ONCE, then never again).

The test suite opens this file forever to prove that today's reader still reads files written by the
1.0 writer. Regenerating it would defeat that purpose: the script refuses if the file exists.
Usage: .venv/bin/python scripts/make_fixture.py
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from artifact_factory import make_artifact  # noqa: E402

OUT = os.path.join(HERE, "..", "tests", "fixtures", "artifact-1.0.h5")

if __name__ == "__main__":
    if os.path.exists(OUT):
        sys.exit(f"error: {OUT} exists; the 1.0 fixture is frozen and must not be regenerated")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    make_artifact(OUT, seed=0, command="make_fixture")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
