"""What training reads (infodisent.data.sources): held-out images, cached and streamed."""

import numpy as np
import pytest
import torch
from helpers import SMALL_PARTS

import infodisent
from infodisent.data.sources import CachedSource, holdout_split


def test_holdout_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 3, 1])
    fit_idx, val_idx = holdout_split(labels, 0.2, seed=3)
    assert np.intersect1d(fit_idx, val_idx).size == 0 and np.union1d(fit_idx, val_idx).tolist() == list(range(34))
    assert np.bincount(labels[val_idx], minlength=4).tolist() == [2, 4, 1, 0]  # >= 1 per class, never a whole class
    again = holdout_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val_idx) and not np.array_equal(holdout_split(labels, 0.2, seed=4)[1], val_idx)
    with pytest.raises(ValueError, match="validation fraction"):
        holdout_split(labels, 1.0)


def test_sources_hold_out_images(tiny_run, tiny_backbone):
    from infodisent.data.datasets import PartsDataset
    from infodisent.data.sources import StreamingSource

    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    cache = run.cache("train")
    fit_idx, val_idx = holdout_split(cache.labels[cache.rows(view=0)], 0.25, seed=0)
    cached = CachedSource(cache, 8, view=0, images=val_idx)
    assert len(cached) == len(val_idx)
    labels = torch.cat([y for _, y in cached.batches(None)])
    assert labels.tolist() == cache.labels[cache.rows(view=0)][val_idx].tolist()
    ds = PartsDataset("train", config=SMALL_PARTS)
    streamed = StreamingSource(tiny_backbone, ds, 4, images=fit_idx[fit_idx < len(ds)])
    assert len(streamed) == int((fit_idx < len(ds)).sum())
    assert sum(len(y) for _, y in streamed.batches(None)) == len(streamed)
