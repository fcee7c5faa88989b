"""Pictures of channels: prototype patches and explanation evidence, rendered on request and cached.

A :class:`Renderer` turns rows of a prototype index (channel, side, rank) and
the evidence of an :class:`~infodisent.explain.explanation.Explanation` into
:class:`Patch` es: the model's view of the image, the box of the response and
the channel's heatmap on it. It keeps three LRU caches, so that a widget can
ask again and again: decoded views of dataset images, their backbone feature
maps (read from the feature cache when there is one, else computed once), and
rendered patches. A channel's map needs only its own row of ``U``
(``J_d = U[d] F``), never the whole rotation.

Example:
    >>> r = infodisent.open_run("runs/demo").renderer("train")
    >>> patches = r.prototypes(12, "pos", n=10)        # top-10 patches of channel 12
    >>> evidence(explanation, channel=12)              # channel 12 on the explained image (a plain function)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generic, Hashable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from ..core.geometry import Box, ViewGeometry, around, cell_box, upsample_map
from ..core.model import InfoDisent
from ..data.datasets import ImageDataset
from ..data.features import FeatureCache
from ..errors import InputError
from .prototypes import PrototypeIndex, Side, check_side

if TYPE_CHECKING:
    from .explanation import Explanation

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Patch:
    """One channel's response on one image: the view, the box of the response, the channel's heatmap."""

    channel: int
    side: Side  # "pos": the strongest positive response, "neg": the strongest negative one
    value: float  # size of that response (>= 0 for a prototype; the signed v_d for evidence)
    position: int  # flat map position r*W + c
    box: Box  # its grid cell, view pixels
    view: Image.Image = field(repr=False)  # the model's view of the image (S x S RGB)
    heatmap: np.ndarray = field(repr=False)  # (S_h, S_w) the channel map upsampled, negated for the neg side
    image: int | None = None  # dataset index (None for an image from elsewhere)
    label: int | None = None
    rank: int | None = None  # rank among the channel's prototypes (None for evidence)

    def crop(self, cells: float = 2.0) -> Image.Image:
        """The patch around the response: ``cells`` grid cells wide, centred on the box.

        Args:
            cells: the patch's side, in grid cells (clipped to the view). Default 2.0."""
        x0, y0, x1, y1 = self.box
        x0, y0, x1, y1 = around(self.box, self.view.size, cells * max(x1 - x0, y1 - y0))
        return self.view.crop((int(x0), int(y0), int(round(x1)), int(round(y1))))


class LRU(Generic[K, V]):
    """A small least-recently-used map with hit/miss counts (functools.lru_cache cannot be filled in batches).

    Args:
        maxsize: the most entries kept; the least recently used go first."""

    def __init__(self, maxsize: int):
        self.maxsize, self.hits, self.misses = maxsize, 0, 0
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value of ``key``, marked recently used, or None when it is not kept (a hit or a miss is counted).

        Args:
            key: the entry's key."""
        if key in self._data:
            self._data.move_to_end(key)
            self.hits += 1
            return self._data[key]
        self.misses += 1
        return None

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recently used entry, dropping the oldest beyond ``maxsize``.

        Args:
            key: the entry's key.
            value: what is kept."""
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)


def heatmap(explanation: "Explanation", channel: int, i: int = 0) -> np.ndarray:
    """Channel ``channel``'s map on explained image ``i``, upsampled to its view (signed, as computed).

    Args:
        explanation: the explanation holding the maps ``J``.
        channel: the channel.
        i: the image of the explanation. Default 0."""
    view = explanation.views[i]
    return upsample_map(explanation.J[i, channel], view.size)


def evidence(explanation: "Explanation", channel: int, i: int = 0) -> Patch:
    """Channel ``channel`` on explained image ``i``: the side that won (the sign of ``v_d``), its box
    and its heatmap (negated for the negative side). Reads no image: the explanation holds the view.

    Args:
        explanation: the explanation.
        channel: the channel.
        i: the image of the explanation. Default 0."""
    ev = explanation[i].channel(channel)
    view = explanation.views[i]
    sign = 1.0 if ev.side == "pos" else -1.0
    source = explanation.sources[i]
    return Patch(ev.channel, ev.side, ev.value, ev.position, ev.box, view,  # type: ignore[arg-type]
                 upsample_map(sign * explanation.J[i, channel], view.size),
                 source if isinstance(source, int) else None, None, None)


class Renderer:
    """Prototype patches and evidence pictures of one model on one dataset split, cached.

    Args:
        model: the InfoDisent model (its ``U`` is read once, at construction).
        dataset: the split the prototype index was mined on (images are read from it lazily). Default None:
            no dataset images (evidence only).
        index: its prototype index, or a callable returning it (resolved on first use). Default None: only
            evidence is rendered.
        features: the split's feature-cache entry. Default None: maps are computed by the backbone.
        images: the size of the LRU cache of decoded views. Default 256.
        maps: the size of the LRU cache of backbone feature maps. Default 1024.
        patches: the size of the LRU cache of rendered patches. Default 4096.
    """

    def __init__(
        self,
        model: InfoDisent,
        dataset: ImageDataset | None = None,
        index: PrototypeIndex | Callable[[], PrototypeIndex] | None = None,
        features: FeatureCache | None = None,
        *,
        images: int = 256,
        maps: int = 1024,
        patches: int = 4096,
    ):
        self.model, self.dataset, self.features = model, dataset, features
        self._index = index
        self._U = model.U.float().cpu()
        self._transform = model.transform
        self._views: LRU[int, Image.Image] = LRU(images)
        self._maps: LRU[int, np.ndarray] = LRU(maps)
        self._patches: LRU[tuple[int, str, int], Patch] = LRU(patches)
        self._row_of: np.ndarray | None = None

    # ------------------------------------------------------------------ images and maps

    @property
    def index(self) -> PrototypeIndex:
        if self._index is None:
            raise InputError("this renderer has no prototype index: mine one (`infodisent mine RUN_DIR`)")
        if callable(self._index) and not isinstance(self._index, PrototypeIndex):
            self._index = self._index()
        return self._index  # type: ignore[return-value]

    def _dataset(self) -> ImageDataset:
        if self.dataset is None:
            raise InputError("this renderer has no dataset to read images from")
        return self.dataset

    def view(self, image: int) -> Image.Image:
        """The model's view (resized, centre-cropped RGB) of dataset image ``image``, cached.

        Args:
            image: the dataset index."""
        image = int(image)
        got = self._views.get(image)
        if got is None:
            img = self._dataset().load_image(image)
            got = ViewGeometry.from_transform(self._transform, img.size).view_image(img)
            self._views.put(image, got)
        return got

    def _cache_rows(self, images: np.ndarray) -> np.ndarray | None:
        """Feature-cache rows of ``images`` (view 0), or None when any is missing."""
        if self.features is None:
            return None
        if self._row_of is None:
            rows0 = self.features.rows(view=0)
            self._row_of = np.full(int(self.features.indices.max(initial=-1)) + 1, -1, np.int64)
            self._row_of[self.features.indices[rows0]] = rows0
        if (images >= len(self._row_of)).any():
            return None
        rows = self._row_of[images]
        return None if (rows < 0).any() else rows

    def feature_maps(self, images: Sequence[int], batch_size: int = 64) -> np.ndarray:
        """Backbone maps ``F`` (n, D, H, W) of dataset images, from the LRU, the feature cache or the backbone
        (in batches of ``batch_size``).

        Args:
            images: dataset indices.
            batch_size: images per backbone batch for the maps neither cache holds. Default 64."""
        images = [int(i) for i in images]
        found: dict[int, np.ndarray] = {}
        for i in dict.fromkeys(images):
            got = self._maps.get(i)  # counts a hit or a miss, and marks it recently used
            if got is not None:
                found[i] = got
        missing = [i for i in dict.fromkeys(images) if i not in found]
        if missing:
            want = np.asarray(missing)
            rows = self._cache_rows(want)
            if rows is not None:
                order = np.argsort(rows, kind="stable")
                x = np.asarray(self.features.features[rows[order]])  # type: ignore[union-attr]
                found.update({int(i): x[j] for j, i in enumerate(want[order])})
            else:
                for s in range(0, len(missing), batch_size):
                    chunk = missing[s:s + batch_size]
                    batch = torch.stack([self._transform(self._dataset().load_image(i)) for i in chunk])
                    with torch.inference_mode():
                        f = self.model.backbone(batch.to(self.model.device)).float().cpu().numpy()
                    found.update({i: f[j] for j, i in enumerate(chunk)})
            for i in missing:
                self._maps.put(i, found[i])
        if not images:
            return np.zeros((0, *self.model.backbone.feature_shape()), np.float32)
        return np.stack([found[i] for i in images])

    def channel_maps(self, images: Sequence[int], channel: int) -> np.ndarray:
        """``J_d`` (n, H, W) of one channel on dataset images: ``U[d] F``, without the other channels.

        Args:
            images: dataset indices.
            channel: the channel."""
        F_ = torch.from_numpy(self.feature_maps(images).astype(np.float32))
        n, d, h, w = F_.shape
        return torch.matmul(self._U[channel], F_.reshape(n, d, h * w)).reshape(n, h, w).numpy()

    # ------------------------------------------------------------------ prototypes

    def render(self, keys: Iterable[tuple[int, Side, int]]) -> list[Patch | None]:
        """Patches for many (channel, side, rank) at once (None where the index has no such row).

        The batch method: the feature maps of all the images involved are loaded in one go, and
        their channel maps computed and upsampled together.

        Args:
            keys: ``(channel, side, rank)`` triples, ``side`` ``"pos"`` or ``"neg"``, ``rank`` from 0."""
        keys = [(int(c), check_side(s), int(r)) for c, s, r in keys]
        index = self.index
        done: dict[tuple[int, str, int], Patch | None] = {}
        todo: dict[tuple[int, str, int], int] = {}
        for key in dict.fromkeys(keys):
            got = self._patches.get(key)  # counts a hit or a miss, and marks it recently used
            if got is not None:
                done[key] = got
                continue
            rows = index.rows(key[0], key[1])  # type: ignore[arg-type]
            if key[2] < len(rows):
                todo[key] = int(rows[key[2]])
            else:
                done[key] = None
        if todo:
            done.update(self._render_rows(list(todo), np.fromiter(todo.values(), np.int64, len(todo))))
        return [done[key] for key in keys]

    def _render_rows(self, keys: list[tuple[int, str, int]], rows: np.ndarray) -> dict[tuple[int, str, int], Patch]:
        cols = self.index.columns
        images, positions = cols["image"][rows], cols["position"][rows]
        channels = torch.as_tensor([c for c, _, _ in keys])
        sign = torch.as_tensor([1.0 if s == "pos" else -1.0 for _, s, _ in keys])
        F_ = torch.from_numpy(self.feature_maps(images)).float()  # (n, D, H, W), one batch of loads
        n, d, h, w = F_.shape
        J = torch.bmm(self._U[channels][:, None, :], F_.reshape(n, d, h * w)).reshape(n, 1, h, w)
        views = [self.view(int(i)) for i in images]
        size = views[0].size
        heat = torch.nn.functional.interpolate(J * sign[:, None, None, None], size=(size[1], size[0]),
                                               mode="bilinear", align_corners=False)[:, 0].numpy()
        grid = self.index.grid
        out = {}
        for j, (c, s, r) in enumerate(keys):
            out[(c, s, r)] = patch = Patch(
                c, s, float(cols["value"][rows[j]]), int(positions[j]),  # type: ignore[arg-type]
                cell_box(int(positions[j]), grid, views[j].size), views[j], heat[j], int(images[j]),
                int(cols["label"][rows[j]]), r)
            self._patches.put((c, s, r), patch)
        return out

    def prototype(self, channel: int, side: Side = "pos", rank: int = 0) -> Patch:
        """One prototype of the index as a patch.

        Args:
            channel: the channel.
            side: ``"pos"`` or ``"neg"``. Default ``"pos"``.
            rank: its rank among the channel's prototypes of that side, 0 the best. Default 0."""
        self._check_channel(channel)
        got = self.render([(channel, side, rank)])[0]
        if got is None:
            raise InputError(f"channel {channel} has no {side} prototype of rank {rank} "
                             f"(the index keeps {self.index.k} per side, and only responses > 0)")
        return got

    def prototypes(self, channel: int, side: Side = "pos", n: int | None = None) -> list[Patch]:
        """The channel's top-``n`` prototypes of one side (default: all the index has), best first.

        Args:
            channel: the channel.
            side: ``"pos"`` or ``"neg"``. Default ``"pos"``.
            n: at most this many. Default None: all the index has."""
        self._check_channel(channel)
        count = len(self.index.rows(channel, side))
        count = count if n is None else min(n, count)
        return [p for p in self.render([(channel, side, r) for r in range(count)]) if p is not None]

    def _check_channel(self, channel: int) -> None:
        d = self.model.head.config.num_features
        if self.index.channels != d:
            raise InputError(f"the prototype index has {self.index.channels} channels, the model {d}: "
                             "it was mined for another backbone")
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < d:
            raise InputError(f"channel {channel!r} is outside 0..{d - 1}")

    # ------------------------------------------------------------------ explanations

    def heatmap(self, explanation: "Explanation", channel: int, i: int = 0) -> np.ndarray:
        """:func:`heatmap` (kept here so a run's renderer draws everything of an explanation).

        Args:
            explanation: the explanation holding the maps ``J``.
            channel: the channel.
            i: the image of the explanation. Default 0."""
        return heatmap(explanation, channel, i)

    def evidence(self, explanation: "Explanation", channel: int, i: int = 0) -> Patch:
        """:func:`evidence` (kept here so a run's renderer draws everything of an explanation).

        Args:
            explanation: the explanation.
            channel: the channel.
            i: the image of the explanation. Default 0."""
        return evidence(explanation, channel, i)

    def cache_info(self) -> dict[str, tuple[int, int, int]]:
        """(hits, misses, size) of each cache."""
        return {name: (c.hits, c.misses, len(c)) for name, c in
                (("views", self._views), ("maps", self._maps), ("patches", self._patches))}


__all__ = ["LRU", "Patch", "Renderer", "evidence", "heatmap"]
