"""`scope export`: artifacts (and diff files) as an offline, Microscope-like static HTML gallery.

    from scopecli.export import export_site
    summary = export_site(["resnet.h5"], "site/", diff_paths=["diff.h5"])
    summary["index"]  # site/index.html
"""

from scopecli.export.site import PER_PAGE, export_site

__all__ = ["PER_PAGE", "export_site"]
