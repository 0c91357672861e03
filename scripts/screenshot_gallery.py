"""Screenshot a page of an exported gallery with headless Chromium (for the README).

    python scripts/screenshot_gallery.py scope-demo/site/m/01-demo/03-_blocks.14/u/60.html scripts/gallery.png

The README's picture comes from `scope demo` (openly licensed photos only): never screenshot galleries
of photos you may not redistribute into the repository.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="HTML page of an exported gallery")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1100)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        print("error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    page = Path(args.page).resolve()
    if not page.is_file():
        print(f"error: no page at {page}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
             f"--screenshot={Path(args.out).resolve()}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
