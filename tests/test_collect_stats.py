"""The statistics sketch and the shard merges: accuracy bound, exact merges, tie-breaking."""

import numpy as np
import torch

from scopecli.core.sketch import merge_examples, merge_stats
from scopecli.collect.stats import LayerStats
from scopecli.core.sketch import NUM_BUCKETS, RELATIVE_ACCURACY, bucket_index_numpy, bucket_representatives
from scopecli.core.records import ExampleSet


def _stats(chunks):
    s = LayerStats(chunks[0].shape[1], torch.device("cpu"))
    for c in chunks:
        s.update(c, c.sum(2), (c * c).sum(2), c.amax(2), c.amin(2))
    return s.finalize()


def test_buckets_are_ordered_and_within_relative_accuracy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-4, 4, 200_000)).astype(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 1e-30, -1e-30, 7e4, -7e4])])
    b = bucket_index_numpy(x)
    assert b.min() >= 0 and b.max() < NUM_BUCKETS
    assert (np.diff(b[np.argsort(x, kind="stable")]) >= 0).all()
    rep = bucket_representatives()[b]
    regular = (np.abs(x) >= 2.0**-16) & (np.abs(x) < 2.0**16)
    assert (np.abs(rep[regular] - x[regular]) <= np.abs(x[regular]) * RELATIVE_ACCURACY).all()
    assert (np.abs(rep[~regular & np.isfinite(rep)]) == 0).all()


def test_torch_histogram_equals_reference_and_merge_is_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, 50, generator=g) * torch.tensor([0.01, 1.0, 30.0, 500.0]).view(1, 4, 1)
    x = torch.relu(x - 0.1)
    whole = _stats([x[:7], x[7:19], x[19:]])
    ref = x.permute(1, 0, 2).reshape(4, -1).numpy()
    for u in range(4):
        np.testing.assert_array_equal(whole.sketch["hist"][u], np.bincount(bucket_index_numpy(ref[u]), minlength=NUM_BUCKETS))
    merged = merge_stats(_stats([x[:11]]), merge_stats(_stats([x[11:12]]), _stats([x[12:25], x[25:]])))
    np.testing.assert_array_equal(merged.sketch["hist"], whole.sketch["hist"])
    np.testing.assert_array_equal(merged.quantiles, whole.quantiles)
    np.testing.assert_array_equal(merged.frac_pos, (ref > 0).mean(1))
    np.testing.assert_allclose(merged.mean, ref.astype(np.float64).mean(1), rtol=1e-6)
    np.testing.assert_allclose(merged.std, ref.astype(np.float64).std(1), rtol=1e-5)
    assert merged.sketch["hist"].dtype == np.int32


def _ex(scores, images):
    scores = np.asarray(scores, np.float32)[None]
    images = np.asarray(images, np.int64)[None]
    k = scores.shape[1]
    return ExampleSet(units=np.array([0]), score=scores, image_index=images,
                      loc=np.zeros((1, k, 2), np.int32), box=np.zeros((1, k, 4), np.int32),
                      patches=[[None if i < 0 else np.full((2, 2, 3), i, np.uint8) for i in images[0]]])


def test_merge_examples_orders_by_score_then_lower_image():
    a = _ex([5.0, 3.0, 3.0], [10, 4, 12])
    b = _ex([3.0, 2.0, np.nan], [2, 8, -1])
    top = merge_examples(a, b, largest=True)
    assert top.image_index[0].tolist() == [10, 2, 4]
    assert top.score[0].tolist() == [5.0, 3.0, 3.0]
    assert [int(p[0, 0, 0]) for p in top.patches[0]] == [10, 2, 4]
    bottom = merge_examples(_ex([1.0, 3.0, np.nan], [7, 1, -1]), _ex([1.0, np.nan, np.nan], [3, -1, -1]), largest=False)
    assert bottom.image_index[0].tolist() == [3, 7, 1]
    few = merge_examples(_ex([1.0, np.nan], [0, -1]), _ex([np.nan, np.nan], [-1, -1]), largest=True)
    assert few.image_index[0].tolist() == [0, -1] and np.isnan(few.score[0, 1]) and few.patches[0][1] is None
