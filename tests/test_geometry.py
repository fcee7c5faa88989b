"""Map positions, views and boxes: the geometry every picture and part metric relies on."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from infodisent.core.geometry import ViewGeometry, cell_box, cell_center, upsample_map
from infodisent.core.weights import load_backbone


@pytest.fixture(scope="module")
def transform():
    return load_backbone("test_resnet", "random", image_size=64).transform  # Resize(67) + CenterCrop(64)


def test_view_image_is_what_the_model_sees(transform):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))
    geo = ViewGeometry.from_transform(transform, img.size)
    assert geo.view == (64, 64) and geo.resized == (int(67 * 130 / 90), 67)
    x = transform(img)
    mean, std = torch.tensor([0.5] * 3)[:, None, None], torch.tensor([0.5] * 3)[:, None, None]
    torch.testing.assert_close(T.ToTensor()(geo.view_image(img)), x * std + mean, atol=1e-5, rtol=0)


def test_points_masks_and_boxes_follow_the_resize_and_crop(transform):
    w, h = 200, 120
    geo = ViewGeometry.from_transform(transform, (w, h))
    arr = np.zeros((h, w, 3), np.uint8)
    arr[60:70, 130:140] = 255  # a bright square centred at (135, 65)
    view = np.asarray(geo.view_image(Image.fromarray(arr))).sum(2)
    ys, xs = np.nonzero(view > 300)
    px, py = geo.points_to_view([[135, 65]])[0]
    assert abs(xs.mean() - px) < 1.0 and abs(ys.mean() - py) < 1.0
    mask = geo.view_mask(arr[..., 0] > 0)
    assert mask.shape == (64, 64) and abs(mask.sum() - (view > 300).sum()) <= 8
    box = (10.0, 20.0, 30.0, 40.0)
    corners = geo.points_to_view(np.array(geo.box_to_image(box)).reshape(2, 2))
    np.testing.assert_allclose(corners.ravel(), box, atol=1e-9)


def test_cell_boxes_per_grid():
    assert cell_box(8, (7, 7), (224, 224)) == (32.0, 32.0, 64.0, 64.0)
    assert cell_box(0, (14, 14), (224, 224)) == (0.0, 0.0, 16.0, 16.0)  # a ViT patch16 token
    assert cell_box(3, (2, 2), (64, 64), window=48) == (24.0, 24.0, 64.0, 64.0)  # clipped to the view
    assert cell_center(48, (7, 7), (224, 224)) == (208.0, 208.0)
    with pytest.raises(ValueError, match="outside a 7x7 grid"):
        cell_box(49, (7, 7), (224, 224))


def test_upsampled_map_peaks_inside_the_max_cell():
    m = np.zeros((7, 7), np.float32)
    m[2, 5] = 3.0
    up = upsample_map(m, (224, 224))
    y, x = np.unravel_index(up.argmax(), up.shape)
    x0, y0, x1, y1 = cell_box(2 * 7 + 5, (7, 7), (224, 224))
    assert up.shape == (224, 224) and x0 <= x < x1 and y0 <= y < y1


def test_unknown_transforms_are_refused():
    with pytest.raises(ValueError, match="understands Resize and CenterCrop"):
        ViewGeometry.from_transform(T.Compose([T.RandomResizedCrop(64)]), (100, 100))
