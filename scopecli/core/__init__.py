"""The floor every other layer stands on, importing nothing of scope's above it.

Errors, settings checks, file I/O, progress, terminal tables, devices (and autocast), unit addresses, the
records that engines hand to the artifact, mergeable statistics (sketch), heatmap geometry, the version.
"""
