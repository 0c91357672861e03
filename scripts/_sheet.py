"""Shared by the contact-sheet scripts (contact_sheet.py, spaces_contact_sheet.py): they build one picture
per artifact layer and stack them into one PNG to look at."""

from __future__ import annotations

from PIL import Image


def stack_bands(bands: list[Image.Image]) -> Image.Image:
    """The pictures one under the other, left-aligned, on white (as wide as the widest)."""
    sheet = Image.new("RGB", (max(b.width for b in bands), sum(b.height for b in bands)), "white")
    y = 0
    for b in bands:
        sheet.paste(b, (0, y))
        y += b.height
    return sheet
