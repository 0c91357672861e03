"""`scope collect`: dataset examples, statistics and probe activations for every unit.

    from scopecli.collect import collect, open_source, CollectSettings
    result = collect(loaded_model, open_source("photos/"), ["layer4.2"], CollectSettings(top_k=16))
"""

from scopecli.data.dataset import ImageSource, open_source, read_labels
from scopecli.collect.engine import CollectResult, CollectSettings, MemorySink, collect, shard_range
from scopecli.core.sketch import merge_examples, merge_stats

__all__ = ["CollectResult", "CollectSettings", "ImageSource", "MemorySink", "collect", "merge_examples",
           "merge_stats", "open_source", "read_labels", "shard_range"]
