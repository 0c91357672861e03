"""Unit spaces: learned bases of a layer (PCA, NMF, TopK sparse autoencoders, imported dictionaries) fitted on
its activation sample and stored in the artifact as the layer `BASE@SPACE`, whose units every command reads.

    from scopecli.jobs.spaces import decompose
    summary = decompose("lite0.h5", "_blocks.14", "sae", k=768)      # or method="pca"/"nmf", from_file=...

One module per method (`pca.py`, `nmf.py`, `sae.py`, `importing.py`), the sample and its split in
`data.py`, fit quality in `quality.py`; the command is `scopecli.jobs.spaces`.
"""
