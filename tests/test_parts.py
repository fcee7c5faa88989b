import dataclasses
import itertools

import numpy as np

from infodisent.data.datasets import PartsDataset
from infodisent.data.datasets.parts import PART_TYPES
from infodisent.records.data import PartsConfig


def test_parts_is_deterministic_and_split_dependent():
    a, b = PartsDataset("train"), PartsDataset("train")
    np.testing.assert_array_equal(np.asarray(a.load_image(7)), np.asarray(b.load_image(7)))
    assert not np.array_equal(np.asarray(a.load_image(7)), np.asarray(PartsDataset("test").load_image(7)))
    other_seed = PartsDataset("train", config=PartsConfig(seed=1))
    assert not np.array_equal(np.asarray(a.load_image(7)), np.asarray(other_seed.load_image(7)))


def test_classes_are_pairs_and_no_single_part_decides():
    ds = PartsDataset("test")
    assert ds.num_classes == 15 and len(ds) == 15 * ds.config.test_per_class
    assert ds.parts_of_class == list(itertools.combinations(range(len(PART_TYPES)), 2))
    for p in range(len(PART_TYPES)):
        assert sum(p in pair for pair in ds.parts_of_class) > 1  # every part is shared by several classes
    assert np.bincount(ds.labels).tolist() == [ds.config.test_per_class] * ds.num_classes


def test_masks_mark_exactly_the_class_parts():
    ds = PartsDataset("train")
    for i in range(0, len(ds), 97):
        img, masks = ds.render(i)
        assert masks.shape == (len(PART_TYPES), img.height, img.width) and masks.dtype == bool
        present = set(np.flatnonzero(masks.reshape(len(PART_TYPES), -1).any(1)))
        assert present <= set(ds.parts_of_class[ds.labels[i]])
        assert len(present) >= 1
        assert (masks.sum(0) <= 1).all()  # one visible part per pixel


def test_parts_masks_cover_real_image_content():
    ds = PartsDataset("train")
    img, masks = ds.render(0)
    arr = np.asarray(img).astype(float)
    bg = ds._background(np.random.default_rng([0, 1, 0]), 224)  # same rng stream start as render
    diff = np.abs(arr - np.asarray(bg).astype(float)).sum(-1)
    assert diff[masks.any(0)].mean() > diff[~masks.any(0)].mean()


def test_render_depends_only_on_seed_split_and_index():
    small = PartsConfig(image_size=64, train_per_class=2, test_per_class=1, scale=(0.3, 0.5))
    first = PartsDataset("train", config=small)
    img, masks = first.render(11)
    later = PartsDataset("train", config=small)
    for i in (3, 0, 29):  # other images rendered first leave image 11 unchanged
        later.render(i)
    img2, masks2 = later.render(11)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(img2))
    np.testing.assert_array_equal(masks, masks2)
    assert np.asarray(img).shape == (64, 64, 3)
    other = PartsDataset("train", config=dataclasses.replace(small, seed=5))
    assert not np.array_equal(np.asarray(img), np.asarray(other.render(11)[0]))
    assert not np.array_equal(np.asarray(img), np.asarray(first.render(12)[0]))
