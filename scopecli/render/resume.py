"""`scope render --resume`: the artifact itself is the state.

Each batch is committed atomically (`ArtifactWriter.checkpoint`), and a resumed run skips the renders
already stored with the same settings and per-image seed, so it ends with the same file an
uninterrupted run writes.
"""

from __future__ import annotations

from scopecli.render.engine import derive_seed


def render_done_keys(existing, layers, settings, fingerprint: str) -> set[tuple[str, int, str, int]]:
    """(layer, unit, objective, diversity_index) already rendered in `existing` with these settings and seeds."""
    done = set()
    if existing is None:
        return done
    for layer in layers:
        if layer not in existing.layers:
            continue
        for v in existing.renders(layer):
            if (v.steps == int(settings.steps) and v.size == int(settings.size) and v.param == settings.param
                    and v.lr == settings.learning_rate and v.schedule == settings.schedule
                    and v.seed == derive_seed(settings.seed, fingerprint, layer, v.unit, v.diversity_index)):
                done.add((layer, v.unit, v.objective, v.diversity_index))
    return done
