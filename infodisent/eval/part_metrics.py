"""Part-based metrics: does a channel fire on one object part, and does a decision point at one?

Two sources of part ground truth: the synthetic ``parts`` dataset (a mask per part type, every image:
channel purity and the pointing game) and CUB-200-2011 (15 keypoints per image with visibility, merged
into 12 part groups: purity, consistency and stability after Huang et al., ICCV 2023, adapted to
channels that several classes share). Only channels some class uses are scored. Each metric is defined
once, exactly, in docs/reference.md, "Part metrics on `parts`" and "Part metrics on CUB-200-2011".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage

from .. import distributed
from ..core.geometry import ViewGeometry, cell_box, cell_center, window_for
from ..errors import InputError
from ..explain.prototypes import PrototypeIndex
from ..records.results import CubPartScores
from .metrics import WEIGHT_THRESHOLD, logits_of

MIN_COVERAGE = 0.2
TOLERANCE = 15.0
WINDOW_CELLS = 2.25  # 72 px at 224 px for a 7x7 map, as Huang et al.


# ----------------------------------------------------------------------------- parts dataset


def cell_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(P, S_h, S_w)`` boolean view masks → ``(P, H, W)``: the share of each grid cell each part covers.

    Args:
        masks: one boolean mask per part, in view pixels.
        grid: ``(H, W)``, the feature map's grid."""
    p, sh, sw = masks.shape
    gh, gw = grid
    out = np.zeros((p, gh, gw))
    for pos in range(gh * gw):
        x0, y0, x1, y1 = cell_box(pos, grid, (sw, sh))
        r, c = divmod(pos, gw)
        cell = masks[:, int(round(y0)) : int(round(y1)), int(round(x0)) : int(round(x1))]
        out[:, r, c] = cell.reshape(p, -1).mean(1) if cell.size else 0.0
    return out


def _view_masks(dataset, transform, i: int) -> np.ndarray:
    masks = dataset.masks(i)
    geo = ViewGeometry.from_transform(transform, (masks.shape[2], masks.shape[1]))
    return geo.view_mask(masks)


def cell_parts(dataset, transform, i: int, grid: tuple[int, int], min_coverage: float = MIN_COVERAGE) -> np.ndarray:
    """``(H, W)``: the part type covering most of each grid cell of image ``i``'s view (at least
    ``min_coverage`` of it), else -1 (background).

    Args:
        dataset: the ``parts`` dataset (it has ``masks``).
        transform: the model's evaluation transform (resize and centre crop: the view).
        i: the image's index.
        grid: ``(H, W)``, the feature map's grid.
        min_coverage: the share of a cell a part must cover to name it. Default ``MIN_COVERAGE`` (0.2)."""
    cov = cell_coverage(_view_masks(dataset, transform, i), grid)
    return np.where(cov.max(0) >= min_coverage, cov.argmax(0), -1)


def parts_purity(
    index: PrototypeIndex, dataset, transform, *, min_coverage: float = MIN_COVERAGE, channels=None
) -> pd.DataFrame:
    """Per channel: ``part`` (most frequent, -1 if only background), ``purity``, ``patches``, ``background``.

    Args:
        index: the prototype index; its positive-side patches are scored.
        dataset: the ``parts`` split the index was mined on.
        transform: the model's evaluation transform (resize and centre crop: the view).
        min_coverage: the share of a cell a part must cover to name it. Default ``MIN_COVERAGE`` (0.2).
        channels: only these channels. Default None: every channel in the index."""
    table = index.table[index.table["side"] == "pos"]
    if channels is not None:
        table = table[table["channel"].isin(np.asarray(channels))]
    parts = {int(i): cell_parts(dataset, transform, int(i), index.grid, min_coverage) for i in table["image"].unique()}
    part = np.array([parts[int(i)][r, c] for i, r, c in zip(table["image"], table["row"], table["col"])], dtype=int)
    t = pd.DataFrame({"channel": table["channel"].to_numpy(), "part": part})
    rows = []
    for d, g in t.groupby("channel"):
        real = g["part"][g["part"] >= 0]
        counts = real.value_counts()
        rows.append({"channel": int(d), "part": int(counts.index[0]) if len(counts) else -1,
                     "purity": float(counts.iloc[0] / len(g)) if len(counts) else 0.0,
                     "patches": len(g), "background": float((g["part"] < 0).mean())})
    return pd.DataFrame(rows, columns=["channel", "part", "purity", "patches", "background"])


def pointing_game(
    index: PrototypeIndex, dataset, transform, W: np.ndarray, bias: np.ndarray | None = None,
    *, tolerance: float = TOLERANCE,
) -> pd.DataFrame:
    """Per image: ``predicted``, ``label``, ``channel`` (top contributor), ``x, y`` (view), ``hit``, ``chance``.

    Args:
        index: the prototype index (pooled values and argmax positions of every image).
        dataset: the ``parts`` split the index was mined on.
        transform: the model's evaluation transform (resize and centre crop: the view).
        W: the classifier, ``(C, D)``.
        bias: the class biases, ``(C,)``. Default None: no bias.
        tolerance: how far from the predicted class's parts, in view pixels, a point still hits. Default
            ``TOLERANCE`` (15, Zhang et al.'s)."""
    valid = np.flatnonzero(index.valid)
    V = np.asarray(index.v[valid], np.float64)
    pred = logits_of(V, W, bias).argmax(1)
    contrib = np.asarray(W, np.float64)[pred] * V
    top = contrib.argmax(1)
    rows = []
    for i, p, d, vrow in zip(valid, pred, top, V):
        side = 0 if vrow[d] >= 0 else 1
        pos = int(index.positions[i, side, d])
        view_masks = _view_masks(dataset, transform, int(i))
        sh, sw = view_masks.shape[1:]
        x, y = cell_center(pos, index.grid, (sw, sh))
        target = np.zeros((sh, sw), bool)
        for part in dataset.parts_of_class[int(p)]:
            target |= view_masks[part]
        dist = ndimage.distance_transform_edt(~target) if target.any() else np.full((sh, sw), np.inf)
        yy, xx = min(int(y), sh - 1), min(int(x), sw - 1)
        rows.append({"image": int(i), "label": int(index.labels[i]), "predicted": int(p), "channel": int(d),
                     "x": x, "y": y, "hit": bool(dist[yy, xx] <= tolerance),
                     "chance": float((dist <= tolerance).mean())})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- CUB keypoints


def part_groups(part_names: list[str]) -> tuple[list[str], np.ndarray]:
    """Merge left/right parts: names of the groups and each part's group id.

    Args:
        part_names: CUB's part names, in part id order."""
    groups: list[str] = []
    ids = []
    for name in part_names:
        g = name.replace("left ", "").replace("right ", "").strip()
        if g not in groups:
            groups.append(g)
        ids.append(groups.index(g))
    return groups, np.array(ids)


def _image_size(dataset, i: int) -> tuple[int, int]:
    if getattr(dataset, "paths", None) is not None:
        with Image.open(dataset.paths[i]) as img:
            return img.size
    return dataset.load_image(i).size


class KeypointRegions:
    """CUB keypoints of a dataset in view coordinates, and which part groups fall in a region.

    Args:
        dataset: a CUB split with part locations (``part_locs``).
        transform: the model's evaluation transform (resize and centre crop: the view).
        grid: ``(H, W)``, the feature map's grid.
        window_cells: the side of the region around a grid cell, in cells. Default ``WINDOW_CELLS`` (2.25)."""

    def __init__(self, dataset, transform, grid: tuple[int, int], window_cells: float = WINDOW_CELLS):
        if getattr(dataset, "part_locs", None) is None:
            raise InputError("part metrics need CUB's parts/part_locs.txt (the dataset has no part locations)")
        self.dataset, self.transform, self.grid = dataset, transform, grid
        self.groups, self.group_of = part_groups(dataset.part_names)
        self.window_cells = window_cells
        self._locs = {int(i): g for i, g in dataset.part_locs.groupby("index")}
        self._cache: dict[int, tuple] = {}

    def keypoints(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """View coordinates (P, 2), visibility (P,), group ids (P,) and view size of image ``i``.

        Args:
            i: the image's index."""
        if i not in self._cache:
            geo = ViewGeometry.from_transform(self.transform, _image_size(self.dataset, i))
            g = self._locs.get(i)
            if g is None:
                xy, vis = np.zeros((0, 2)), np.zeros(0, bool)
                gid = np.zeros(0, int)
            else:
                xy = geo.points_to_view(g[["x", "y"]].to_numpy())
                vis = g["visible"].to_numpy() > 0
                vis &= (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < geo.view[0]) & (xy[:, 1] < geo.view[1])
                gid = self.group_of[g["part_id"].to_numpy() - 1]
            self._cache[i] = (xy, vis, gid, geo.view)
        return self._cache[i]

    def visible(self, i: int) -> np.ndarray:
        """(G,) bool: groups with a visible keypoint in the view.

        Args:
            i: the image's index."""
        xy, vis, gid, _ = self.keypoints(i)
        out = np.zeros(len(self.groups), bool)
        out[gid[vis]] = True
        return out

    def present(self, i: int, position: int) -> np.ndarray:
        """(G,) bool: groups with a visible keypoint inside the region around ``position``.

        Args:
            i: the image's index.
            position: a flat grid position (``row * W + col``)."""
        xy, vis, gid, view = self.keypoints(i)
        x0, y0, x1, y1 = cell_box(position, self.grid, view, window_for(self.grid, view, self.window_cells))
        inside = vis & (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
        out = np.zeros(len(self.groups), bool)
        out[gid[inside]] = True
        return out


def channel_classes(W: np.ndarray, top: int = 10, threshold: float = WEIGHT_THRESHOLD) -> dict[int, np.ndarray]:
    """Channel → the classes that have it among their ``top`` heaviest weights (above ``threshold``).

    Args:
        W: the classifier, ``(C, D)``.
        top: how many of each class's heaviest weights count. Default 10.
        threshold: the weight above which a channel has a say in a class. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`."""
    W = np.asarray(W)
    heavy = np.argsort(-W, axis=1, kind="stable")[:, :top]
    out: dict[int, list[int]] = {}
    for c, ds in enumerate(heavy):
        for d in ds:
            if W[c, d] > threshold:
                out.setdefault(int(d), []).append(c)
    return {d: np.array(cs) for d, cs in out.items()}


IMAGENET_STD = (0.229, 0.224, 0.225)  # the units of Huang et al.'s noise


def perturb(pixels: torch.Tensor, sigma: float = 0.2, clip: float = 0.25, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Huang et al.'s perturbation of (B, 3, H, W) pixels in [0, 1]: Gaussian noise of ``sigma``, clipped to
    ``+-clip``, in ImageNet-normalised units (so ``sigma * std`` in pixels); not clamped, as in theirs.

    Args:
        pixels: the images, ``(B, 3, H, W)`` in [0, 1].
        sigma: the noise's standard deviation, in normalised units. Default 0.2.
        clip: the bound of the noise, in normalised units. Default 0.25.
        generator: the random generator drawn from. Default None: torch's global one."""
    noise = (torch.randn(pixels.shape, generator=generator) * sigma).clamp(-clip, clip)
    return pixels + noise * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def noisy_positions(model, dataset, images: np.ndarray, sigma: float = 0.2, seed: int = 0, batch_size: int = 32,
                    clip: float = 0.25, positions=None):
    """Positive-side argmax positions (n, D) of every channel for clean and :func:`perturb`-ed images
    (``positions``: another map from an input batch to (B, n) positions, e.g. of chosen directions).

    Under ``torchrun`` each process takes every ``world``-th batch (drawing, not using, the others' noise,
    so that every image gets the one-process noise) and all processes get all positions.

    Args:
        model: the InfoDisent model (its backbone's normalisation and transform are used).
        dataset: the images.
        images: the dataset indices of the images.
        sigma: the noise's standard deviation (see :func:`perturb`). Default 0.2.
        seed: the seed of the noise. Default 0.
        batch_size: images per batch. Default 32.
        clip: the bound of the noise (see :func:`perturb`). Default 0.25.
        positions: a map from an input batch to its ``(B, n)`` positions. Default None: the model's
            positive-side argmax position of every channel.
    Returns:
        ``(clean, noisy)``, each ``(len(images), n)``."""
    mean, std = model.backbone.normalization()
    g = torch.Generator().manual_seed(seed)
    device = model.device
    shard = distributed.current()
    size = tuple(model.backbone.data_config["input_size"])
    if positions is None:
        positions = lambda x: model.outputs(x).pool.pos_index  # noqa: E731
    mine = []
    for b, s in enumerate(range(0, len(images), batch_size)):
        chunk = images[s : s + batch_size]
        if b % shard.world != shard.rank:
            torch.randn((len(chunk), *size), generator=g)  # another process's batch: keep the noise in step
            continue
        x = torch.stack([model.transform(dataset.load_image(int(i))) for i in chunk])
        pixels = x * std + mean
        xn = (perturb(pixels, sigma, clip, g) - mean) / std
        mine.append((b, *(positions(batch.to(device)).cpu().numpy() for batch in (x, xn))))
    done = sorted((item for part in distributed.gather_objects(mine) for item in part), key=lambda t: t[0])
    if not done:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
    return np.concatenate([t[1] for t in done]), np.concatenate([t[2] for t in done])


def _cub_purity(index: PrototypeIndex, regions: KeypointRegions, channels) -> dict[int, float]:
    """Channel -> share of its top-k positive patches that contain its most frequent part group."""
    table = index.table[(index.table["side"] == "pos") & index.table["channel"].isin(np.asarray(channels))]
    purity = {}
    for d, g in table.groupby("channel"):
        pres = np.stack([regions.present(int(i), int(p)) for i, p in zip(g["image"], g["position"])])
        purity[int(d)] = float(pres.sum(0).max() / len(pres))
    return purity


def has_parts(dataset) -> bool:
    """Whether ``dataset`` knows where object parts are (the ``parts`` masks or CUB's keypoints).

    Args:
        dataset: any dataset."""
    return hasattr(dataset, "masks") or getattr(dataset, "part_locs", None) is not None


def prototype_parts(index: PrototypeIndex, dataset, transform, channel: int, side: str = "pos", *,
                    cache: dict | None = None) -> pd.DataFrame:
    """Which parts a channel's prototype patches show: one row per patch (``rank, image, label, parts``), where
    ``parts`` is a tuple of part names: on ``parts``, the part covering most of the patch's grid cell (empty
    for background); on CUB, the part groups with a visible keypoint in the 2.25-cell region around it.
    ``cache``: a dict kept between calls (e.g. by a widget) so that no image's parts are worked out twice.

    Args:
        index: the prototype index.
        dataset: the split the index was mined on, with part masks or keypoints.
        transform: the model's evaluation transform (resize and centre crop: the view).
        channel: the channel.
        side: ``"pos"`` or ``"neg"``, the side of its prototypes. Default ``"pos"``.
        cache: a dict kept between calls. Default None: a fresh one."""
    rows = index.prototypes(channel, side)  # type: ignore[arg-type]
    cache = {} if cache is None else cache
    if hasattr(dataset, "masks"):
        names = list(dataset.part_names)

        def of(i: int) -> np.ndarray:
            if ("cells", i) not in cache:
                cache[("cells", i)] = cell_parts(dataset, transform, i, index.grid)
            return cache[("cells", i)]

        found = [of(int(i))[r, c] for i, r, c in zip(rows["image"], rows["row"], rows["col"])]
        parts = [(names[p],) if p >= 0 else () for p in found]
    elif getattr(dataset, "part_locs", None) is not None:
        if "regions" not in cache:
            cache["regions"] = KeypointRegions(dataset, transform, index.grid)
        regions = cache["regions"]
        parts = [tuple(g for g, hit in zip(regions.groups, regions.present(int(i), int(p))) if hit)
                 for i, p in zip(rows["image"], rows["position"])]
    else:
        raise InputError(f"the {getattr(dataset, 'name', 'given')} dataset has no part annotations")
    return pd.DataFrame({"rank": rows["rank"], "image": rows["image"], "label": rows["label"], "parts": parts})


def channel_purity(index: PrototypeIndex, dataset, transform, channels) -> pd.Series:
    """Part purity of ``channels`` (as the metrics define it for the dataset), indexed by channel; NaN for a
    channel with no patches.

    Args:
        index: the prototype index.
        dataset: the split the index was mined on, with part masks (``parts``) or keypoints (CUB).
        transform: the model's evaluation transform (resize and centre crop: the view).
        channels: the channels scored."""
    channels = np.asarray(channels, dtype=int)
    if hasattr(dataset, "masks"):
        df = parts_purity(index, dataset, transform, channels=channels)
        got = dict(zip(df["channel"].astype(int), df["purity"]))
    else:
        got = _cub_purity(index, KeypointRegions(dataset, transform, index.grid), channels)
    return pd.Series([got.get(int(d), np.nan) for d in channels], index=channels, name="purity", dtype=float)


def cub_part_metrics(
    index: PrototypeIndex,
    dataset,
    W: np.ndarray,
    transform,
    *,
    model=None,
    window_cells: float = WINDOW_CELLS,
    top_classes: int = 10,
    mu: float = 0.8,
    threshold: float = WEIGHT_THRESHOLD,
    stability_images: int = 200,
    sigma: float = 0.2,
    clip: float = 0.25,
    seed: int = 0,
) -> CubPartScores:
    """Purity, consistency and (with ``model``) stability on CUB keypoints; see the module docstring.

    Args:
        index: the prototype index mined on ``dataset``.
        dataset: a CUB split with part locations.
        W: the classifier, ``(C, D)``; the channels some class uses are scored.
        transform: the model's evaluation transform (resize and centre crop: the view).
        model: the model, for stability. Default None: no stability.
        window_cells: the side of the region around a grid cell, in cells. Default ``WINDOW_CELLS`` (2.25).
        top_classes: a channel is judged on the images of the classes that have it among this many of their
            heaviest weights. Default 10.
        mu: the rate at which a part group must be in a channel's region for it to be consistent. Default 0.8.
        threshold: the weight above which a channel has a say in a class. Default
            :data:`~infodisent.records.options.WEIGHT_THRESHOLD`.
        stability_images: at most this many images for stability, drawn from those consistency judges.
            Default 200.
        sigma: the stability noise's standard deviation (see :func:`perturb`). Default 0.2.
        clip: the bound of that noise (see :func:`perturb`). Default 0.25.
        seed: the seed of the stability images and noise. Default 0."""
    regions = KeypointRegions(dataset, transform, index.grid, window_cells)
    used = np.flatnonzero(np.asarray(W).max(0) > threshold)
    purity = _cub_purity(index, regions, used)
    classes_of = channel_classes(W, top_classes, threshold)
    valid = index.valid
    consistent = {}
    images_of: dict[int, np.ndarray] = {}
    for d, cs in classes_of.items():
        imgs = np.flatnonzero(np.isin(index.labels, cs) & valid)
        if len(imgs) == 0:
            continue
        images_of[d] = imgs
        pres = np.stack([regions.present(int(i), int(index.positions[i, 0, d])) for i in imgs])
        vis = np.stack([regions.visible(int(i)) for i in imgs])
        rate = np.where(vis.sum(0) > 0, (pres & vis).sum(0) / np.maximum(vis.sum(0), 1), 0.0)
        consistent[d] = bool(rate.max() >= mu)
    out = {
        "window_px": window_for(index.grid, index.meta.view, window_cells),
        "part_groups": regions.groups,
        "channels_scored": len(purity),
        "purity": float(np.mean(list(purity.values()))) if purity else float("nan"),
        "consistency": float(np.mean(list(consistent.values()))) if consistent else float("nan"),
        "consistency_channels": len(consistent),
    }
    if model is not None and images_of:
        rng = np.random.default_rng(seed)
        pool = np.unique(np.concatenate(list(images_of.values())))
        subset = np.sort(rng.choice(pool, min(stability_images, len(pool)), replace=False))
        clean, noisy = noisy_positions(model, dataset, subset, sigma, seed, clip=clip)
        row = {int(i): r for r, i in enumerate(subset)}
        per_channel = []
        for d, imgs in images_of.items():
            same = [
                np.array_equal(regions.present(int(i), int(clean[row[int(i)], d])),
                               regions.present(int(i), int(noisy[row[int(i)], d])))
                for i in imgs if int(i) in row
            ]
            if same:
                per_channel.append(float(np.mean(same)))
        out["stability"] = float(np.mean(per_channel)) if per_channel else float("nan")
        out["stability_images"] = int(len(subset))
        out["stability_sigma"] = sigma
        out["stability_clip"] = clip
    return CubPartScores(**out)


__all__ = [
    "KeypointRegions", "cell_coverage", "cell_parts", "channel_classes", "channel_purity", "cub_part_metrics",
    "has_parts", "noisy_positions", "part_groups", "prototype_parts", "perturb", "parts_purity", "pointing_game",
]
