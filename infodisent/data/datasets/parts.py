"""The synthetic ``parts`` dataset: real photographic parts on textured backgrounds.

Every image shows two *parts* cut from scikit-image's bundled photographs (a
cat's face, a coffee cup, an astronaut's face, a rocket, a retina, a horse)
on a tinted texture background (brick, grass, gravel), at random positions
and scales, often with a distractor object (moon, galaxies, stained tissue,
the scikit-image logo) that belongs to no class. A class is a *pair* of part
types: with 6 part types there are 15 classes, and every part type occurs in
5 of them, so no single part decides the class. Each image comes with a
ground-truth mask per part type (what is visible of it after occlusion).

Images are generated on the fly from ``(seed, split, index)``: deterministic,
no download.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

from ...records.data import PartsConfig
from .base import ImageDataset

PART_TYPES = ("cat", "cup", "astronaut", "rocket", "retina", "horse")
DISTRACTORS = ("moon", "galaxies", "tissue", "logo")
TEXTURES = ("brick", "grass", "gravel")
_SPLIT_CODE = {"train": 1, "test": 2}


def _ellipse_alpha(h: int, w: int) -> np.ndarray:
    a = Image.new("L", (w, h), 0)
    ImageDraw.Draw(a).ellipse((0, 0, w - 1, h - 1), fill=255)
    return np.asarray(a)


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    return Image.fromarray(np.dstack([rgb[..., :3], alpha]).astype(np.uint8), "RGBA")


def _crop_ellipse(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> Image.Image:
    crop = img[top:bottom, left:right]
    return _rgba(crop, _ellipse_alpha(*crop.shape[:2]))


def _make_sprites() -> dict[str, Image.Image]:
    """RGBA cut-outs of the part and distractor sources."""
    horse = ~skdata.horse()
    coat = np.zeros((*horse.shape, 3), np.uint8)
    coat[...] = (120, 72, 40)
    coat = (coat * (0.8 + 0.4 * skdata.gravel()[: horse.shape[0], : horse.shape[1], None] / 255)).clip(0, 255)
    logo = skdata.logo()
    return {
        "cat": _crop_ellipse(skdata.chelsea(), 10, 250, 110, 340),
        "cup": _crop_ellipse(skdata.coffee(), 20, 330, 140, 520),
        "astronaut": _crop_ellipse(skdata.astronaut(), 20, 250, 150, 330),
        "rocket": _crop_ellipse(skdata.rocket(), 20, 427, 270, 390),
        "retina": _crop_ellipse(skdata.retina(), 60, 1350, 60, 1350),
        "horse": _rgba(coat, horse.astype(np.uint8) * 255),
        "moon": _crop_ellipse(skdata.moon(), 60, 460, 60, 460),
        "galaxies": _crop_ellipse(skdata.hubble_deep_field(), 100, 500, 300, 700),
        "tissue": _crop_ellipse(skdata.immunohistochemistry(), 50, 450, 50, 450),
        "logo": Image.fromarray(logo, "RGBA"),
    }


def _make_textures() -> dict[str, np.ndarray]:
    return {name: getattr(skdata, name)() for name in TEXTURES}


class PartsDataset(ImageDataset):
    """The synthetic parts dataset (see the module docstring).

    ``masks(i)`` gives a ``(num_parts, H, W)`` boolean array, one mask per part
    type in ``part_names`` order; ``parts_of_class[c]`` the two part types of class ``c``.

    Args:
        split: ``"train"`` or ``"test"``; each split draws its own images. Default ``"train"``.
        transform: applied to each image. Default None: the PIL image as generated.
        max_classes: keep only the first this many part pairs. Default None: all 15.
        config: the generation settings. Default None: :class:`PartsConfig`'s defaults.
    """

    name = "parts"

    def __init__(
        self,
        split: str = "train",
        transform=None,
        max_classes: int | None = None,
        config: PartsConfig | None = None,
    ):
        self.config = config or PartsConfig()
        pairs = list(itertools.combinations(range(len(PART_TYPES)), 2))
        if max_classes is not None:
            pairs = pairs[:max_classes]
        self.parts_of_class = pairs
        self.part_names = list(PART_TYPES)
        classes = [f"{PART_TYPES[a]}+{PART_TYPES[b]}" for a, b in pairs]
        n = self.config.per_class(split)
        labels = np.repeat(np.arange(len(pairs)), n)
        super().__init__(labels, classes, split, None, None, transform)

    @cached_property
    def _sprites(self) -> dict[str, Image.Image]:
        return _make_sprites()

    @cached_property
    def _textures(self) -> dict[str, np.ndarray]:
        return _make_textures()

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, _SPLIT_CODE.get(self.split, 3), i])

    def render(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """Image ``i`` and its ``(num_parts, H, W)`` boolean part masks.

        Args:
            i: the sample's index."""
        return self._render(i)[:2]

    def _render(self, i: int) -> tuple[Image.Image, np.ndarray, tuple[int, int, int, int] | None]:
        cfg, rng = self.config, self._rng(i)
        size = cfg.image_size
        canvas = self._background(rng, size)
        masks = np.zeros((len(PART_TYPES), size, size), dtype=bool)
        a, b = self.parts_of_class[int(self.labels[i])]
        objects = [(PART_TYPES[a], a), (PART_TYPES[b], b)]
        for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
            objects.append((DISTRACTORS[rng.integers(len(DISTRACTORS))], -1))
        order = rng.permutation(len(objects))
        placed: list[tuple[int, int, int, int]] = []
        for k in order:
            name, part = objects[k]
            sprite, (x, y) = self._place(rng, self._sprites[name], size, placed)
            canvas.paste(sprite, (x, y), sprite)
            alpha = np.asarray(sprite.getchannel("A"))[: size - y, : size - x] > 127
            h, w = alpha.shape
            masks[:, y : y + h, x : x + w] &= ~alpha  # later objects occlude earlier parts
            if part >= 0:
                masks[part, y : y + h, x : x + w] |= alpha
            placed.append((x, y, w, h))
        box = self._mark_place(i, placed) if self.has_mark(i) else None
        if box is not None:  # the shortcut, drawn last: a magenta square with a white cross, on no part
            x0, y0, x1, y1 = box
            draw = ImageDraw.Draw(canvas)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 0, 255))
            draw.line((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), width=max(1, (x1 - x0) // 6))
            draw.line((x0, y1 - 1, x1 - 1, y0), fill=(255, 255, 255), width=max(1, (x1 - x0) // 6))
            masks[:, y0:y1, x0:x1] = False
        return canvas, masks, box

    def _mark_place(self, i: int, placed) -> tuple[int, int, int, int]:
        """Where image ``i``'s mark goes: of a dozen seeded positions, the one overlapping the objects least."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, _SPLIT_CODE.get(self.split, 3), i, 8])
        side = max(4, int(round(cfg.shortcut_size * cfg.image_size)))
        lo, hi = int(cfg.margin * cfg.image_size), cfg.image_size - int(cfg.margin * cfg.image_size) - side
        best, best_overlap = None, None
        for _ in range(12):
            x, y = (int(v) for v in rng.integers(lo, max(lo + 1, hi), size=2))
            overlap = sum(_overlap((x, y, side, side), b) for b in placed)
            if best_overlap is None or overlap < best_overlap:
                best, best_overlap = (x, y), overlap
            if overlap == 0:
                break
        return best[0], best[1], best[0] + side, best[1] + side

    def _background(self, rng: np.random.Generator, size: int) -> Image.Image:
        tex = self._textures[TEXTURES[rng.integers(len(TEXTURES))]]
        crop = int(rng.integers(size // 2, tex.shape[0]))
        y0, x0 = rng.integers(0, tex.shape[0] - crop + 1), rng.integers(0, tex.shape[1] - crop + 1)
        patch = Image.fromarray(tex[y0 : y0 + crop, x0 : x0 + crop]).resize((size, size), Image.BILINEAR)
        grey = np.asarray(patch, dtype=np.float32)[..., None] / 255.0
        tint = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
        base = rng.uniform(0.0, 0.35, size=3).astype(np.float32)
        rgb = (base + grey * tint) * 255.0
        return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")

    def _place(self, rng, sprite: Image.Image, size: int, placed) -> tuple[Image.Image, tuple[int, int]]:
        cfg = self.config
        side = rng.uniform(*cfg.scale) * size
        aspect = sprite.width / sprite.height * rng.uniform(0.85, 1.15)
        w, h = (int(side), int(side / aspect)) if aspect >= 1 else (int(side * aspect), int(side))
        s = sprite.resize((max(w, 8), max(h, 8)), Image.BILINEAR)
        if rng.random() < 0.5:
            s = s.transpose(Image.FLIP_LEFT_RIGHT)
        s = s.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, expand=True)
        gain = rng.uniform(0.75, 1.25)
        rgb = (np.asarray(s.convert("RGB"), np.float32) * gain).clip(0, 255).astype(np.uint8)
        s = Image.fromarray(np.dstack([rgb, np.asarray(s.getchannel("A"))]), "RGBA")
        lo = int(cfg.margin * size)
        best, best_overlap = (lo, lo), None
        for _ in range(12):  # prefer positions that overlap earlier objects least
            x = int(rng.integers(lo, max(lo + 1, size - lo - s.width)))
            y = int(rng.integers(lo, max(lo + 1, size - lo - s.height)))
            overlap = sum(_overlap((x, y, s.width, s.height), p) for p in placed)
            if best_overlap is None or overlap < best_overlap:
                best, best_overlap = (x, y), overlap
            if overlap == 0:
                break
        return s, best

    def load_image(self, i: int) -> Image.Image:
        """Image ``i``, generated.

        Args:
            i: the sample's index."""
        return self.render(i)[0]

    def masks(self, i: int) -> np.ndarray:
        """Image ``i``'s ``(num_parts, H, W)`` boolean masks, one per part type in ``part_names`` order: what is
        visible of each part.

        Args:
            i: the sample's index."""
        return self.render(i)[1]

    def has_mark(self, i: int) -> bool:
        """Whether image ``i`` carries the planted shortcut's mark (see :class:`PartsConfig`).

        Args:
            i: the sample's index."""
        cfg = self.config
        if cfg.shortcut_class is None:
            return False
        draw = np.random.default_rng([cfg.seed, _SPLIT_CODE.get(self.split, 3), i, 7]).random()
        if self.split == "train":
            return int(self.labels[i]) == cfg.shortcut_class and draw < cfg.shortcut_share
        return draw < cfg.shortcut_test_share

    def mark_box(self, i: int) -> tuple[int, int, int, int] | None:
        """``(x0, y0, x1, y1)`` of image ``i``'s mark, in pixels (None without one): the ground truth of the
        shortcut, which covers no part (it is placed where it overlaps the objects least).

        Args:
            i: the sample's index."""
        return self._render(i)[2] if self.has_mark(i) else None

    def describe(self) -> str:
        cfg = self.config
        if cfg.shortcut_class is None:  # the description (and the cache keys) of datasets made before shortcuts
            shown = {k: v for k, v in cfg.__dict__.items() if not k.startswith("shortcut_")}
            text = "PartsConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
        else:
            text = repr(cfg) + "|mark placed off the objects"  # the generator's version of the mark
        h = hashlib.sha256(f"parts|{self.split}|{text}|{self.classes}".encode())
        return h.hexdigest()[:16]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
