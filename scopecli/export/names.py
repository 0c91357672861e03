"""Safe names for the gallery: HTML-escaped text, percent-encoded relative URLs, file-system slugs.

Why: artifacts come from strangers. Layer names hold dots and slashes, class names may hold
`<script>`, image paths may hold apostrophes. Everything a page shows is escaped by the templates'
autoescape (see `pages.py`; the SVG charts, built in Python, use `esc`), every link goes through
`href` (a template filter), and every file name the site writes is built by `slug` (plus a numeric
prefix that makes it unique), so no stored string can escape its element or its folder.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from urllib.parse import quote

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SLUG_MAX = 60


def esc(text) -> str:
    """Text for HTML element content or a quoted attribute value (for HTML built in Python: charts.py)."""
    return html.escape(str(text), quote=True)


def href(path: str) -> str:
    """A relative URL for an attribute: each path segment percent-encoded.

    Only letters, digits, `_.-~` and `/` stay as they are, so no scheme (`javascript:`), query,
    fragment or HTML-special character survives; autoescape then has nothing left to escape.
    """
    return quote(str(path), safe="/")


_DATA_URI = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/]*={0,2}")


def imgsrc(src: str | None, root: str = "") -> str:
    """A picture's src: an inline `data:` URI of a PNG/JPEG as it is (checked to hold nothing else), an
    absolute `/...` URL (the server's) or a site-root-relative path prefixed with `root`, percent-encoded."""
    src = str(src or "")
    if not src:
        return ""
    if src.startswith("data:"):
        return src if _DATA_URI.fullmatch(src) else ""
    return href(src if src.startswith("/") else root + src)


def slug(text: str, fallback: str = "x") -> str:
    """A short file-name part: ASCII letters, digits, '.', '_' and '-' only; never starts with '.' or '-'."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    s = _UNSAFE.sub("-", ascii_text).strip(".-")
    s = re.sub(r"\.{2,}", ".", s)[:SLUG_MAX].strip(".-")
    return s or fallback


def fmt(x, spec: str = ".3g", missing: str = "–") -> str:
    """A number for display; NaN/inf/None as a dash."""
    if x is None:
        return missing
    try:
        v = float(x)
    except (TypeError, ValueError):
        return missing
    if math.isnan(v) or math.isinf(v):
        return missing
    return format(v, spec)


def short_hash(h: str | None, n: int = 12) -> str:
    return (h or "")[:n] or "–"
