"""Prototype mining: one streaming pass finds every channel's top-k patches.

For each channel ``d`` of ``J = U F`` and each side (``pos``: largest
``max ReLU(J_d)``, ``neg``: largest ``max ReLU(-J_d)``), the ``k`` images of a
split where the channel responds most, with the map position of that
response. The pass also records every image's pooled values ``v`` (the head's
own pooling) and the argmax position of both sides of every channel. Memory
stays at ``2 x D x (k + batch)`` candidates plus one batch of maps, whatever
the split's size: the per-image arrays go to memory-mapped files as the pass
goes (only ``mine_prototypes(..., run_dir=None)``, for small splits and tests,
keeps them in RAM).

A prototype index lives in ``<run>/prototypes/<split>/``:

- ``index.csv``: one row per (channel, side, rank): ``channel, side, rank,
  image`` (dataset index), ``label, position`` (flat ``r*W + c``), ``row, col,
  value`` (the response: ``max ReLU(J_d)`` for ``pos``, ``max ReLU(-J_d)`` for
  ``neg``, so always >= 0). Ranks where the channel never fires on that side
  (value 0) are left out.
- ``v.npy`` ``(N, D)`` float32 and ``positions.npy`` ``(N, 2, D)`` int16 (the
  ``pos``/``neg`` argmax of each channel), memory-mapped, one row per dataset
  index (NaN / -1 for unreadable images).
- ``meta.json``, written last: how to rebuild the dataset, the grid, the
  head's checksum (a retrained head makes the index stale).

Example:
    >>> index = mine_prototypes(model, dataset, "runs/demo")
    >>> index.prototypes(channel=12, side="pos")          # DataFrame of the top-k
    >>> patches = render_prototypes(model, index, 12)     # crops, boxes, heatmaps
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .datasets import ImageDataset, PartsConfig, build_dataset
from .features import FeatureCache, _collate, _Views, find_cache
from .geometry import Box, ViewGeometry, around, cell_box, upsample_map
from .head import two_sided_max
from .io import atomic_write_json, file_sha256, read_json
from .model import HEAD_WEIGHTS, InfoDisent

Side = Literal["pos", "neg"]
SIDES: tuple[Side, Side] = ("pos", "neg")
PROTOTYPES = "prototypes"
FORMAT_VERSION = 1


class StaleIndexError(ValueError):
    """A prototype index mined with a head that has since changed."""


def dataset_spec(dataset: ImageDataset) -> dict[str, Any]:
    """What :func:`build_dataset` needs to rebuild ``dataset`` (stored in the index)."""
    config = getattr(dataset, "config", None)
    return {
        "name": dataset.name,
        "root": str(dataset.root) if dataset.root is not None else None,
        "split": dataset.split,
        "max_classes": dataset.num_classes,
        "parts": asdict(config) if isinstance(config, PartsConfig) else None,
    }


def rebuild_dataset(spec: dict[str, Any], transform=None) -> ImageDataset:
    parts = PartsConfig.from_dict(spec["parts"]) if spec.get("parts") else None
    return build_dataset(spec["name"], spec.get("root"), spec["split"], transform, spec.get("max_classes"), parts=parts)


@dataclass
class PrototypeIndex:
    """A mined prototype index (see the module docstring); no pixels needed to use it."""

    table: pd.DataFrame
    v: np.ndarray  # (N, D) float32, NaN rows for unreadable images
    positions: np.ndarray  # (N, 2, D) int16: argmax of the pos / neg side
    labels: np.ndarray  # (N,)
    meta: dict[str, Any]
    path: Path | None = None
    _dataset: ImageDataset | None = field(default=None, repr=False)
    _features: tuple[FeatureCache, dict[int, int]] | None = field(default=None, repr=False)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])  # type: ignore[return-value]

    @property
    def k(self) -> int:
        return int(self.meta["k"])

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.v[:, 0])

    def prototypes(self, channel: int, side: Side = "pos") -> pd.DataFrame:
        """The top-k rows of one channel and side, best first."""
        t = self.table
        return t[(t["channel"] == channel) & (t["side"] == side)].sort_values("rank").reset_index(drop=True)

    def dataset(self) -> ImageDataset:
        """The split the index was mined on, rebuilt from its recorded spec (or the one given at mining)."""
        if self._dataset is None:
            self._dataset = rebuild_dataset(self.meta["dataset"])
        return self._dataset

    @classmethod
    def load(cls, run_dir: str | Path, split: str = "train", check_head: bool = True) -> "PrototypeIndex":
        """Open ``<run_dir>/prototypes/<split>``; :class:`StaleIndexError` if the head changed since mining."""
        path = Path(run_dir) / PROTOTYPES / split
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(
                f"no prototype index at {path}; create it with `infodisent mine {run_dir} --split {split}`"
            )
        meta = read_json(path / "meta.json")
        head_file = Path(run_dir) / HEAD_WEIGHTS
        if check_head and head_file.is_file() and meta.get("head_sha256") not in (None, file_sha256(head_file)):
            raise StaleIndexError(
                f"{path} was mined with another version of {head_file}; re-run `infodisent mine {run_dir} --split {split}`"
            )
        return cls(
            pd.read_csv(path / "index.csv"),
            np.load(path / "v.npy", mmap_mode="r"),
            np.load(path / "positions.npy", mmap_mode="r"),
            np.load(path / "labels.npy"),
            meta,
            path,
        )


def _batches_from_cache(cache: FeatureCache, batch_size: int, device) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    rows = cache.rows(view=0)
    for s in range(0, len(rows), batch_size):
        r = rows[s : s + batch_size]
        x, _ = cache.load(r, device)
        yield x, cache.indices[np.sort(r)]


def _batches_from_backbone(model: InfoDisent, dataset, batch_size, num_workers, strict, device, skipped) -> Iterator:
    views = _Views(dataset, 1, model.backbone.transform, None, 0, strict)
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    for x, rows, failed in loader:
        for r, reason in failed:
            skipped.append(reason)
            warnings.warn(f"skipping unreadable image {reason}", stacklevel=2)
        if x is not None:
            with torch.inference_mode():
                f = model.backbone(x.to(device))
            yield f.float(), np.asarray(rows)


@torch.no_grad()
def mine_prototypes(
    model: InfoDisent,
    dataset: ImageDataset,
    run_dir: str | Path | None = None,
    *,
    k: int = 10,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    strict: bool = False,
    progress: bool = True,
) -> PrototypeIndex:
    """Mine every channel's top-``k`` patches on ``dataset`` in one streaming pass.

    Feature maps come from the feature cache when an entry exists for
    ``dataset`` (nothing is extracted for it), else from the backbone. With
    ``run_dir`` the index is written to ``<run_dir>/prototypes/<split>/``
    (replacing an older one only once the new one is complete).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t0 = time.perf_counter()
    head = model.head.to(device).eval()
    model.backbone.to(device)
    n, d = len(dataset), head.config.num_features
    grid = tuple(model.backbone.feature_shape()[1:])
    cache = find_cache(model.backbone, dataset, cache_dir) if use_cache else None
    skipped: list[str] = list(f"{b['path']}: {b['reason']}" for b in cache.bad_files) if cache else []
    batches = (
        _batches_from_cache(cache, batch_size, device) if cache is not None
        else _batches_from_backbone(model, dataset, batch_size, num_workers, strict, device, skipped)
    )
    tmp = None
    if run_dir is not None:
        final = Path(run_dir) / PROTOTYPES / dataset.split
        tmp = final.parent / f".{dataset.split}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        v_all = np.lib.format.open_memmap(tmp / "v.npy", mode="w+", dtype=np.float32, shape=(n, d))
        pos_all = np.lib.format.open_memmap(tmp / "positions.npy", mode="w+", dtype=np.int16, shape=(n, 2, d))
    else:
        v_all, pos_all = np.empty((n, d), np.float32), np.empty((n, 2, d), np.int16)
    v_all[:] = np.nan
    pos_all[:] = -1

    top_val = torch.full((2, d, k), -1.0, device=device)
    top_img = torch.full((2, d, k), -1, dtype=torch.long, device=device)
    top_pos = torch.zeros((2, d, k), dtype=torch.long, device=device)
    bar = tqdm(total=n, desc=f"mine {dataset.name}/{dataset.split}", unit="img", disable=not progress)
    with head.frozen_parameters():
        for F_, images in batches:
            F_ = F_.to(device, torch.float32)
            J = head.rotation(F_)
            v, pool = head.pool(J)  # eval mode: the exact two-sided max, or the average
            pool = pool if pool is not None else two_sided_max(J)
            where = torch.stack([pool.pos_index, pool.neg_index])  # (2, B, D)
            v_all[images] = v.cpu().numpy()
            pos_all[images] = where.transpose(0, 1).cpu().numpy().astype(np.int16)
            b = len(images)
            cand_val = torch.cat([top_val, torch.stack([pool.pos_values, pool.neg_values]).transpose(1, 2)], 2)
            img_t = torch.as_tensor(images, device=device).expand(2, d, b)
            cand_img = torch.cat([top_img, img_t], 2)
            cand_pos = torch.cat([top_pos, where.transpose(1, 2)], 2)
            top_val, order = cand_val.topk(k, dim=2)
            top_img, top_pos = cand_img.gather(2, order), cand_pos.gather(2, order)
            bar.update(b)
    bar.close()

    rows = []
    tv, ti, tp = top_val.cpu().numpy(), top_img.cpu().numpy(), top_pos.cpu().numpy()
    gw = grid[1]
    for s, side in enumerate(SIDES):
        ch, rank = np.meshgrid(np.arange(d), np.arange(k), indexing="ij")
        keep = (ti[s] >= 0) & (tv[s] > 0)
        pos = tp[s][keep]
        rows.append(pd.DataFrame({
            "channel": ch[keep], "side": side, "rank": rank[keep], "image": ti[s][keep],
            "label": dataset.labels[ti[s][keep]], "position": pos, "row": pos // gw, "col": pos % gw,
            "value": tv[s][keep],
        }))
    table = pd.concat(rows, ignore_index=True).sort_values(["channel", "side", "rank"]).reset_index(drop=True)
    labels = np.asarray(dataset.labels)
    meta = {
        "format": FORMAT_VERSION,
        "dataset": dataset_spec(dataset),
        "classes": list(dataset.classes),
        "k": k,
        "grid": list(grid),
        "view": list(model.backbone.data_config["input_size"][-1:-3:-1]),
        "channels": d,
        "num_images": n,
        "num_valid": int((~np.isnan(v_all[:, 0])).sum()) if n else 0,
        "pooling": head.config.pooling,
        "source": "cache" if cache is not None else "backbone",
        "cache_path": str(cache.path) if cache is not None else None,
        "skipped_images": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if tmp is None:
        return PrototypeIndex(table, v_all, pos_all, labels, meta, None, dataset)
    head_file = Path(run_dir) / HEAD_WEIGHTS
    meta["head_sha256"] = file_sha256(head_file) if head_file.is_file() else None
    v_all.flush()
    pos_all.flush()
    del v_all, pos_all
    table.to_csv(tmp / "index.csv", index=False)
    np.save(tmp / "labels.npy", labels)
    atomic_write_json(tmp / "meta.json", meta)
    old = final.parent / f".{dataset.split}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    index = PrototypeIndex.load(run_dir, dataset.split, check_head=False)  # its head checksum was just taken
    index._dataset = dataset
    return index


@dataclass(frozen=True)
class PrototypePatch:
    """One rendered prototype: the image as the model saw it, the box of the response, its heatmap."""

    channel: int
    side: Side
    rank: int
    image_index: int
    label: int
    value: float
    position: int
    box: Box  # the grid cell, view pixels
    view: Image.Image  # the model's view of the image (S x S RGB)
    heatmap: np.ndarray  # (S_h, S_w) channel map on this image (negated for the neg side), upsampled

    def crop(self, cells: float = 2.0) -> Image.Image:
        """The patch around the response: ``cells`` grid cells wide, centred on the box."""
        x0, y0, x1, y1 = self.box
        x0, y0, x1, y1 = around(self.box, self.view.size, cells * max(x1 - x0, y1 - y0))
        return self.view.crop((int(x0), int(y0), int(round(x1)), int(round(y1))))


def feature_maps_for(model: InfoDisent, index: PrototypeIndex, images: list[int], device="cpu") -> torch.Tensor:
    """Backbone maps of some images of the index's split: from its cache entry when present, else computed."""
    cache_path = index.meta.get("cache_path")
    if index._features is None and cache_path and (Path(cache_path) / "manifest.json").is_file():
        cache = FeatureCache.open(Path(cache_path))
        rows0 = cache.rows(view=0)
        index._features = (cache, {int(i): int(r) for r, i in zip(rows0, cache.indices[rows0])})
    if index._features is not None:
        cache, row_of = index._features
        if all(int(i) in row_of for i in images):
            rows = np.array([row_of[int(i)] for i in images])
            order = np.argsort(rows, kind="stable")
            x, _ = cache.load(rows, device)  # comes back in sorted row order
            out = torch.empty_like(x)
            out[torch.as_tensor(order)] = x
            return out
    ds = index.dataset()
    batch = torch.stack([model.backbone.transform(ds.load_image(int(i))) for i in images]).to(device)
    with torch.inference_mode():
        return model.backbone(batch).float()


@torch.no_grad()
def render_prototypes(
    model: InfoDisent, index: PrototypeIndex, channel: int, side: Side = "pos", n: int | None = None
) -> list[PrototypePatch]:
    """The top-``n`` (default: all k) prototypes of ``channel`` as patches with boxes and heatmaps."""
    if index.meta["channels"] != model.head.config.num_features:
        raise ValueError(
            f"the prototype index has {index.meta['channels']} channels, the model {model.head.config.num_features}: "
            "it was mined for another backbone"
        )
    if not 0 <= channel < index.meta["channels"]:
        raise ValueError(f"channel {channel} is outside 0..{index.meta['channels'] - 1}")
    rows = index.prototypes(channel, side).head(n)
    if rows.empty:
        return []
    ds = index.dataset()
    F_ = feature_maps_for(model, index, rows["image"].tolist(), next(model.head.parameters()).device)
    with model.head.frozen_parameters():
        J = model.head.rotation(F_)[:, channel]
    sign = 1.0 if side == "pos" else -1.0
    out = []
    for (_, r), m in zip(rows.iterrows(), J.cpu().numpy()):
        img = ds.load_image(int(r["image"]))
        geo = ViewGeometry.from_transform(model.backbone.transform, img.size)
        view = geo.view_image(img)
        out.append(PrototypePatch(
            channel, side, int(r["rank"]), int(r["image"]), int(r["label"]), float(r["value"]), int(r["position"]),
            cell_box(int(r["position"]), index.grid, view.size), view, upsample_map(sign * m, view.size),
        ))
    return out


__all__ = [
    "PROTOTYPES", "PrototypeIndex", "PrototypePatch", "SIDES", "StaleIndexError", "dataset_spec",
    "feature_maps_for", "mine_prototypes", "rebuild_dataset", "render_prototypes",
]
