"""Where a feature-map position lies in an image: the geometry of the model's view.

timm's evaluation transform resizes an image (shorter side to
``floor(S / crop_pct)``) and crops its centre to ``S x S``; the backbone turns
that *view* into an ``H x W`` map. Position ``p`` of the map (flat, ``p = r*W + c``)
is the grid cell ``r, c``, and its box in view pixels is

    x0 = c * S_w / W,  y0 = r * S_h / H,  x1 = x0 + S_w / W,  y1 = y0 + S_h / H

for every backbone family: the stride-aligned cell of a CNN (ResNet,
DenseNet, EfficientNet, ConvNeXt: stride 32, so 32 px at 224), the patch of a
ViT/DeiT (16 px for ``patch16``) and the merged window of Swin's last stage
(32 px). A CNN cell's receptive field is much larger than its cell; the cell
is where the response is *centred*, which is what the box shows. Boxes and
points map back to the original image by inverting the resize and the crop
(:meth:`ViewGeometry.box_to_image`).

Example:
    >>> g = ViewGeometry.from_transform(backbone.transform, image.size)
    >>> g.view_image(image)                              # the S x S pixels the model saw
    >>> cell_box(17, (7, 7), g.view)                    # (x0, y0, x1, y1) of position 17 in the view
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..errors import InputError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ViewGeometry:
    """Resize then centre-crop: ``view = original * scale - offset``."""

    image_size: tuple[int, int]  # original (width, height)
    resized: tuple[int, int]  # (width, height) after the resize
    view: tuple[int, int]  # (width, height) after the crop
    offset: tuple[int, int]  # (left, top) of the crop in the resized image
    resize_ops: tuple = ()
    crop_ops: tuple = ()
    tensor_ops: tuple = ()  # what follows the crop: to tensor, normalise

    @classmethod
    def from_transform(cls, transform, image_size: tuple[int, int]) -> "ViewGeometry":
        """Read the geometry of a torchvision ``Compose`` (timm's eval transform) for an image of ``(w, h)``.

        Args:
            transform: a ``Compose`` of ``Resize``, ``CenterCrop`` and tensor conversion or normalisation
                steps, or one such step; any other step is an :class:`~infodisent.errors.InputError`.
            image_size: the original image's ``(width, height)``."""
        w, h = image_size
        resize_ops, crop_ops, tensor_ops = [], [], []
        view = (w, h)
        resized = (w, h)
        offset = (0, 0)
        for t in getattr(transform, "transforms", [transform]):
            if isinstance(t, T.Resize):
                if crop_ops:
                    raise InputError("a resize after a crop is not supported by ViewGeometry")
                size = t.size
                if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(size) == 1):
                    s = size if isinstance(size, int) else size[0]
                    short, long = (w, h) if w <= h else (h, w)
                    new_long = int(s * long / short)
                    resized = (s, new_long) if w <= h else (new_long, s)
                else:
                    resized = (int(size[1]), int(size[0]))
                view = resized
                resize_ops.append(t)
            elif isinstance(t, T.CenterCrop):
                ch, cw = t.size
                rw, rh = view
                if cw > rw or ch > rh:
                    raise InputError(f"centre crop {cw}x{ch} is larger than the resized image {rw}x{rh}")
                offset = (int(round((rw - cw) / 2.0)), int(round((rh - ch) / 2.0)))
                view = (cw, ch)
                crop_ops.append(t)
            elif type(t).__name__ in ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor", "ConvertImageDtype"):
                tensor_ops.append(t)
            else:
                raise InputError(
                    f"ViewGeometry understands Resize and CenterCrop (timm's crop_mode='center' or 'squash'); "
                    f"got {type(t).__name__}"
                )
        return cls((w, h), resized, view, offset, tuple(resize_ops), tuple(crop_ops), tuple(tensor_ops))

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized[0] / self.image_size[0], self.resized[1] / self.image_size[1]

    def view_image(self, img: Image.Image) -> Image.Image:
        """The RGB pixels the model sees (before tensor conversion and normalisation).

        Args:
            img: the original image, of size :attr:`image_size`."""
        for t in (*self.resize_ops, *self.crop_ops):
            img = t(img)
        return img

    def to_tensor(self, view: Image.Image):
        """The model's input tensor from the view: ``transform(image) == to_tensor(view_image(image))``.

        Args:
            view: the view, as :meth:`view_image` returns it."""
        x = view
        for t in self.tensor_ops:
            x = t(x)
        return x

    def view_mask(self, mask: np.ndarray) -> np.ndarray:
        """A boolean ``(..., H, W)`` mask of the original image, brought to the view (nearest neighbour).

        Args:
            mask: one mask or a stack of masks over the original image's pixels.
        Returns:
            The masks over the view's pixels, ``(..., view height, view width)``."""
        m = np.asarray(mask, dtype=np.uint8)
        lead = m.shape[:-2]
        flat = m.reshape(-1, *m.shape[-2:])
        out = []
        for plane in flat:
            img = Image.fromarray(plane * 255)
            if self.resized != self.image_size:
                img = img.resize(self.resized, Image.NEAREST)
            l, t = self.offset
            img = img.crop((l, t, l + self.view[0], t + self.view[1]))
            out.append(np.asarray(img) > 127)
        return np.stack(out).reshape(*lead, self.view[1], self.view[0])

    def points_to_view(self, xy: np.ndarray) -> np.ndarray:
        """Original-image pixel coordinates ``(N, 2)`` to view coordinates.

        Args:
            xy: points ``(x, y)`` in original-image pixels (reshaped to ``(N, 2)``)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        return np.stack([xy[:, 0] * sx - self.offset[0], xy[:, 1] * sy - self.offset[1]], axis=1)

    def box_to_image(self, box: Box) -> Box:
        """A view box back in original-image pixels.

        Args:
            box: ``(x0, y0, x1, y1)`` in view pixels."""
        sx, sy = self.scale
        x0, y0, x1, y1 = box
        l, t = self.offset
        return ((x0 + l) / sx, (y0 + t) / sy, (x1 + l) / sx, (y1 + t) / sy)


def cell_box(position: int, grid: tuple[int, int], view: tuple[int, int], window: float | None = None) -> Box:
    """Box ``(x0, y0, x1, y1)`` in view pixels of flat map position ``position`` on an ``(H, W)`` grid.

    ``view`` is the view's ``(width, height)``. With ``window`` (pixels), a square
    of that side centred on the cell, clipped to the view, instead of the cell itself.

    Args:
        position: the flat map position ``r * W + c``.
        grid: the map's ``(H, W)``.
        view: the view's ``(width, height)`` in pixels.
        window: the side, in view pixels, of a square centred on the cell. Default None: the cell itself.
    """
    gh, gw = grid
    if not 0 <= position < gh * gw:
        raise InputError(f"position {position} is outside a {gh}x{gw} grid")
    r, c = divmod(int(position), gw)
    sx, sy = view[0] / gw, view[1] / gh
    box = (c * sx, r * sy, (c + 1) * sx, (r + 1) * sy)
    return box if window is None else around(box, view, window)


def cell_at(x: float, y: float, grid: tuple[int, int], view: tuple[int, int]) -> int:
    """The flat map position whose cell (as :func:`cell_box` draws it) holds view point ``(x, y)``.

    Args:
        x: the point's horizontal coordinate in view pixels.
        y: its vertical coordinate in view pixels.
        grid: the map's ``(H, W)``.
        view: the view's ``(width, height)``; a point outside it is an error."""
    gh, gw = grid
    if not (0 <= x < view[0] and 0 <= y < view[1]):
        raise InputError(f"point ({x:.1f}, {y:.1f}) is outside the {view[0]}x{view[1]} view")
    return min(int(y * gh / view[1]), gh - 1) * gw + min(int(x * gw / view[0]), gw - 1)


def around(box: Box, view: tuple[int, int], side: float) -> Box:
    """A square of ``side`` pixels centred on ``box``, clipped to the view ``(width, height)``.

    Args:
        box: ``(x0, y0, x1, y1)`` in view pixels.
        view: the view's ``(width, height)``.
        side: the square's side in view pixels."""
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, side / 2
    return (max(0.0, cx - half), max(0.0, cy - half), min(float(view[0]), cx + half), min(float(view[1]), cy + half))


def cell_center(position: int, grid: tuple[int, int], view: tuple[int, int]) -> tuple[float, float]:
    """Centre ``(x, y)`` in view pixels of a flat map position.

    Args:
        position: the flat map position ``r * W + c``.
        grid: the map's ``(H, W)``.
        view: the view's ``(width, height)``."""
    x0, y0, x1, y1 = cell_box(position, grid, view)
    return ((x0 + x1) / 2, (y0 + y1) / 2)


def upsample_map(m: np.ndarray, view: tuple[int, int]) -> np.ndarray:
    """An ``(H, W)`` channel map bilinearly upsampled to the view's ``(height, width)``
    (``align_corners=False``: each value sits at its cell's centre).

    Args:
        m: the channel map ``(H, W)``.
        view: the view's ``(width, height)``.
    Returns:
        A float32 array ``(view height, view width)``."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(view[1], view[0]), mode="bilinear", align_corners=False)[0, 0].numpy()


def window_for(grid: tuple[int, int], view: tuple[int, int], cells: float = 2.0) -> float:
    """A window side of ``cells`` grid cells, in view pixels.

    Args:
        grid: the map's ``(H, W)``.
        view: the view's ``(width, height)``.
        cells: the side in grid cells (of the larger cell dimension). Default 2.0."""
    return cells * max(view[0] / grid[1], view[1] / grid[0])


__all__ = ["Box", "ViewGeometry", "around", "cell_box", "cell_center", "upsample_map", "window_for"]
