"""Prototype mining: one streaming pass finds every channel's top-k patches.

For each channel ``d`` of ``J = U F`` and each side (``pos``: largest
``max ReLU(J_d)``, ``neg``: largest ``max ReLU(-J_d)``), the ``k`` images of a
split where the channel responds most, with the map position of that
response. The pass also records every image's pooled values ``v`` (the head's
own pooling) and the argmax position of both sides of every channel. Memory
stays at ``2 x D x (k + batch)`` candidates plus one batch of maps, whatever
the split's size: the per-image arrays go to memory-mapped files as the pass
goes (only ``mine_prototypes(..., out=None)``, for small splits and tests,
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

The index is pure data: a frozen :class:`PrototypeIndex` of arrays and a
DataFrame. Pictures of its rows come from :class:`infodisent.explain.render.Renderer`.

Example:
    >>> index = infodisent.open_run("runs/demo").index("train")
    >>> index.prototypes(channel=12, side="pos")          # DataFrame of the top-k
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..core.head import InfoDisentHead
from ..core.model import InfoDisent
from ..data.datasets import ImageDataset
from ..data.features import FeatureCache
from ..data.loader import stream_feature_maps
from ..errors import CorruptFileError, InfodisentError, InputError
from ..io import atomic_write_json, read_json
from ..records.data import DatasetSpec
from ..records.options import Side
from ..records.serialize import from_dict, to_dict

SIDES: tuple[Side, Side] = ("pos", "neg")
FORMAT_VERSION = 2


class StaleIndexError(InfodisentError, ValueError):
    """A prototype index mined with a head that has since changed."""


def check_side(side: str) -> Side:
    """``side`` if it is ``"pos"`` or ``"neg"``, else an :class:`InputError`.

    Args:
        side: a side's name."""
    if side not in SIDES:
        raise InputError(f"side must be 'pos' or 'neg', not {side!r}")
    return side  # type: ignore[return-value]


@dataclass(frozen=True)
class IndexMeta:
    """``meta.json`` of a prototype index: what was mined, from what, with which head."""

    dataset: DatasetSpec
    classes: list[str]
    k: int  # prototypes per channel and side
    grid: tuple[int, int]  # (H, W) of the feature map
    view: tuple[int, int]  # (width, height) of the model's view, pixels
    channels: int
    num_images: int
    num_valid: int
    pooling: str
    source: Literal["cache", "backbone"]
    cache_path: str | None = None
    skipped_images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    head_sha256: str | None = None
    format: int = FORMAT_VERSION


@dataclass(frozen=True)
class PrototypeIndex:
    """A mined prototype index (see the module docstring): arrays and a table, no pixels."""

    table: pd.DataFrame  # channel, side, rank, image, label, position, row, col, value
    v: np.ndarray  # (N, D) float32, NaN rows for unreadable images
    positions: np.ndarray  # (N, 2, D) int16: argmax of the pos / neg side
    labels: np.ndarray  # (N,)
    meta: IndexMeta
    path: Path | None = None

    def __repr__(self) -> str:
        m = self.meta
        return (f"PrototypeIndex({m.dataset.name}/{m.dataset.split}: {m.num_valid} images, top-{m.k} of "
                f"{m.channels} channels per side, {len(self.table)} rows)")

    @property
    def grid(self) -> tuple[int, int]:
        return self.meta.grid

    @property
    def k(self) -> int:
        return self.meta.k

    @property
    def channels(self) -> int:
        return self.meta.channels

    @cached_property
    def valid(self) -> np.ndarray:
        """(N,) True for the images that were read."""
        return ~np.isnan(np.asarray(self.v[:, 0]))

    @cached_property
    def _rows(self) -> dict[tuple[int, str], np.ndarray]:
        """(channel, side) -> row numbers of the table, in rank order."""
        ranks = self.table["rank"].to_numpy()
        return {(int(c), s): idx[np.argsort(ranks[idx], kind="stable")]
                for (c, s), idx in self.table.groupby(["channel", "side"], sort=False).indices.items()}

    @cached_property
    def columns(self) -> dict[str, np.ndarray]:
        """The table's columns as numpy arrays (fast row access for renderers)."""
        return {c: self.table[c].to_numpy() for c in self.table.columns}

    def rows(self, channel: int, side: Side = "pos") -> np.ndarray:
        """Table row numbers of one channel and side, best first (see :meth:`prototypes` for the rows).

        Args:
            channel: the channel.
            side: ``"pos"`` or ``"neg"``. Default ``"pos"``."""
        check_side(side)
        return self._rows.get((int(channel), side), np.zeros(0, np.int64))

    def prototypes(self, channel: int, side: Side = "pos") -> pd.DataFrame:
        """The top-k rows of one channel and side, best first (empty where it never fires on that side).

        Args:
            channel: the channel, in ``0..D-1``.
            side: ``"pos"`` or ``"neg"``. Default ``"pos"``."""
        check_side(side)
        if not 0 <= int(channel) < self.channels:
            raise InputError(f"channel {channel} is outside 0..{self.channels - 1}")
        return self.table.iloc[self.rows(channel, side)].reset_index(drop=True)

    @classmethod
    def load(cls, folder: str | Path, head_sha256: str | None = None) -> "PrototypeIndex":
        """Open an index folder; :class:`StaleIndexError` when ``head_sha256`` differs from the mining head's.

        Args:
            folder: the index folder (``<run>/prototypes/<split>``).
            head_sha256: the current head file's checksum. Default None: not checked."""
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"no prototype index at {folder}")
        raw = read_json(folder / "meta.json")
        if raw.get("format") != FORMAT_VERSION:
            raise StaleIndexError(f"{folder} has index format {raw.get('format')}, this version reads "
                                  f"{FORMAT_VERSION}; mine it again")
        meta = from_dict(IndexMeta, raw)
        if head_sha256 is not None and meta.head_sha256 != head_sha256:
            raise StaleIndexError(f"{folder} was mined with another version of the run's head" if meta.head_sha256
                                  else f"{folder} does not record the head it was mined with")
        try:
            table = pd.read_csv(folder / "index.csv")
            v = np.load(folder / "v.npy", mmap_mode="r")
            positions = np.load(folder / "positions.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy")
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise CorruptFileError(folder, f"{type(e).__name__}: {e}", "mine it again") from None
        n, d = meta.num_images, meta.channels
        if v.shape != (n, d) or positions.shape != (n, 2, d) or labels.shape != (n,):
            raise CorruptFileError(folder, f"arrays of shapes {v.shape}, {positions.shape}, {labels.shape} for "
                                           f"{n} images and {d} channels", "mine it again")
        return cls(table, v, positions, labels, meta, folder)


@torch.no_grad()
def mine_prototypes(
    model: InfoDisent,
    dataset: ImageDataset,
    out: str | Path | None = None,
    *,
    k: int = 10,
    features: FeatureCache | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    strict: bool = False,
    progress: bool = True,
    head_sha256: str | None = None,
) -> PrototypeIndex:
    """Mine every channel's top-``k`` patches on ``dataset`` in one streaming pass, in three steps (as
    zennit-crp's ``analyze_layer``, ``sort_result_array`` and ``collect_results``): accumulate each
    process's top-k lists and per-image arrays (:func:`_accumulate`), gather the lists of every process
    (:func:`_gather`), and write the index (:func:`_write`: the table, the arrays, ``meta.json`` last, the
    folder swapped in whole).

    Args:
        model: the model whose channels are mined.
        dataset: the split whose images are read.
        out: the index folder, replaced only once the new index is complete. Default None: the index is kept
            in memory (small splits and tests) and not shared across processes.
        k: patches per channel and side. Default 10.
        features: the split's feature-cache entry: its maps are read instead of running the backbone.
            Default None.
        batch_size: images per batch. Default 64.
        num_workers: image-loading processes when the backbone runs. Default 0.
        device: where the head (and backbone) run. Default None: the model's.
        strict: an unreadable image is an error instead of a skipped row. Default False.
        progress: show a progress bar (rank 0 only). Default True.
        head_sha256: the head file's checksum, recorded so that a retrained head makes the index stale.
            Default None.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k (prototypes per channel and side) must be an integer >= 1, got {k!r}")
    t0 = time.perf_counter()
    device = model.device if device is None else torch.device(device)
    head = model.head.to(device).eval()
    model.backbone.to(device)
    n, d = len(dataset), head.config.num_features
    # under torchrun (with an output folder): each process mines its rows and keeps its own top-k lists;
    # rank 0 writes every row (sent to it batch by batch) and merges the lists
    shard = distributed.current() if out is not None else distributed.Shard()
    skipped: list[str] = [f"{b['path']}: {b['reason']}" for b in features.bad_files] if features is not None else []
    batches = features.map_batches(batch_size, device, shard) if features is not None else stream_feature_maps(
        model.backbone, dataset, batch_size=batch_size, num_workers=num_workers, strict=strict, device=device,
        skipped=skipped, shard=shard)
    final = Path(out) if out is not None else None
    tmp = final.parent / f".{final.name}.partial" if final is not None else None
    arrays = _Arrays.open(tmp, n, d, writer=shard.main)
    bar = tqdm(total=n, desc=f"mine {dataset.name}/{dataset.split}", unit="img", disable=not progress or not shard.main)
    top = _accumulate(head, batches, _TopK.empty(d, k, device), arrays, shard, bar.update)
    bar.close()
    lists = _gather(top, skipped if features is None else None, shard)
    if lists is None:  # another process: rank 0 writes the index
        distributed.barrier()
        return PrototypeIndex.load(final)
    (tv, ti, tp), gathered = lists
    skipped = gathered if gathered is not None else skipped
    grid = tuple(model.backbone.feature_shape()[1:])
    table = _table(*_best(tv, ti, tp, k), np.asarray(dataset.labels), grid[1])
    size = model.backbone.data_config["input_size"]
    meta = IndexMeta(
        dataset=DatasetSpec.of(dataset), classes=list(dataset.classes), k=int(k), grid=grid,  # type: ignore[arg-type]
        view=(int(size[2]), int(size[1])), channels=d, num_images=n,
        num_valid=int((~np.isnan(arrays.v[:, 0])).sum()) if n else 0, pooling=head.config.pooling,
        source="cache" if features is not None else "backbone",
        cache_path=str(features.path) if features is not None else None, skipped_images=skipped,
        seconds=round(time.perf_counter() - t0, 3), created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        head_sha256=head_sha256,
    )
    labels = np.asarray(dataset.labels)
    if final is None:
        return PrototypeIndex(table, arrays.v, arrays.positions, labels, meta, None)
    _write(tmp, final, table, arrays, labels, meta)
    distributed.barrier()  # the other processes open the index once it is in place
    return PrototypeIndex.load(final)


@dataclass
class _TopK:
    """The ``k`` best candidates so far of every (side, channel): value, image and map position, (2, D, k)."""

    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor

    @classmethod
    def empty(cls, d: int, k: int, device: torch.device) -> "_TopK":
        return cls(torch.full((2, d, k), -1.0, device=device),
                   torch.full((2, d, k), -1, dtype=torch.long, device=device),
                   torch.zeros((2, d, k), dtype=torch.long, device=device))

    def add(self, values: torch.Tensor, positions: torch.Tensor, images: list[int]) -> "_TopK":
        """These lists merged with a batch's ``values`` and ``positions`` (2, D, B) of ``images``."""
        k = self.values.shape[2]
        img = torch.as_tensor(images, device=values.device).expand(2, values.shape[1], len(images))
        value, order = torch.cat([self.values, values], 2).topk(k, dim=2)
        return _TopK(value, torch.cat([self.images, img], 2).gather(2, order),
                     torch.cat([self.positions, positions], 2).gather(2, order))

    def numpy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.values.cpu().numpy(), self.images.cpu().numpy(), self.positions.cpu().numpy()


@dataclass
class _Arrays:
    """Every image's pooled values ``v`` (N, D) and both sides' argmax positions (N, 2, D): memory-mapped in
    the partial index folder, in memory without one, absent on a process that does not write."""

    v: np.ndarray | None
    positions: np.ndarray | None

    @classmethod
    def open(cls, folder: Path | None, n: int, d: int, writer: bool) -> "_Arrays":
        if folder is None:
            return cls(np.full((n, d), np.nan, np.float32), np.full((n, 2, d), -1, np.int16))
        if not writer:
            return cls(None, None)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        v = np.lib.format.open_memmap(folder / "v.npy", mode="w+", dtype=np.float32, shape=(n, d))
        positions = np.lib.format.open_memmap(folder / "positions.npy", mode="w+", dtype=np.int16, shape=(n, 2, d))
        v[:] = np.nan
        positions[:] = -1
        return cls(v, positions)


def _accumulate(head: InfoDisentHead, batches: Iterable[tuple[torch.Tensor, list[int]]], top: _TopK, arrays: _Arrays,
                shard: distributed.Shard, done: Callable[[int], object]) -> _TopK:
    """The streaming pass: each batch's two-sided max (the head's own pooling, U and W computed once in eval
    mode) merged into ``top``, and its rows of ``arrays`` filled (under torchrun, rank 0 receives every
    process's rows); ``done(n)`` hears of each batch written."""
    for F_, images in batches:
        v_b = pos_b = None
        if len(images):
            out = head.forward_details(F_.to(top.values.device, torch.float32))
            pool = out.pool
            where = torch.stack([pool.pos_index, pool.neg_index])  # (2, B, D)
            v_b, pos_b = out.v.cpu().numpy(), where.transpose(0, 1).cpu().numpy().astype(np.int16)
            top = top.add(torch.stack([pool.pos_values, pool.neg_values]).transpose(1, 2), where.transpose(1, 2),
                          images)
        pieces = distributed.gather_to_main((images, v_b, pos_b)) if shard.active else [(images, v_b, pos_b)]
        for imgs, v_p, pos_p in pieces or []:
            if len(imgs):
                arrays.v[imgs] = v_p
                arrays.positions[imgs] = pos_p
                done(len(imgs))
    return top


def _gather(top: _TopK, skipped: list[str] | None, shard: distributed.Shard
            ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str] | None] | None:
    """Every process's top-k lists side by side (2, D, k x processes), and the images each skipped (when read
    from the backbone: ``skipped``), on rank 0; None on the other ranks."""
    tv, ti, tp = top.numpy()
    if not shard.active:
        return (tv, ti, tp), skipped
    lists = distributed.gather_to_main((tv, ti, tp, skipped or []))
    if not shard.main:
        return None
    merged = tuple(np.concatenate([part[j] for part in lists], axis=2) for j in range(3))
    return merged, (sorted(s for part in lists for s in part[3]) if skipped is not None else None)


def _table(tv: np.ndarray, ti: np.ndarray, tp: np.ndarray, labels: np.ndarray, grid_width: int) -> pd.DataFrame:
    """``index.csv``: one row per (channel, side, rank) where the channel fires on that side."""
    d, k = tv.shape[1:]
    rows = []
    for s, side in enumerate(SIDES):
        ch, rank = np.meshgrid(np.arange(d), np.arange(k), indexing="ij")
        keep = (ti[s] >= 0) & (tv[s] > 0)
        pos = tp[s][keep]
        rows.append(pd.DataFrame({
            "channel": ch[keep], "side": side, "rank": rank[keep], "image": ti[s][keep],
            "label": labels[ti[s][keep]], "position": pos, "row": pos // grid_width, "col": pos % grid_width,
            "value": tv[s][keep],
        }))
    return pd.concat(rows, ignore_index=True).sort_values(["channel", "side", "rank"]).reset_index(drop=True)


def _write(tmp: Path, final: Path, table: pd.DataFrame, arrays: _Arrays, labels: np.ndarray, meta: IndexMeta) -> None:
    """The index folder: the arrays flushed, the table and the labels, ``meta.json`` last, then the whole
    folder swapped in for an older index."""
    arrays.v.flush()
    arrays.positions.flush()
    arrays.v = arrays.positions = None  # the memory maps closed before the folder moves
    table.to_csv(tmp / "index.csv", index=False)
    np.save(tmp / "labels.npy", labels)
    atomic_write_json(tmp / "meta.json", to_dict(meta))
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _best(val: np.ndarray, img: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` best candidates of every (side, channel): largest value first, ties by image index, so that
    one process's top-k and the merge of several processes' top-k lists give the same index."""
    order = np.lexsort((img, -val), axis=-1)[..., :k]
    return (np.take_along_axis(val, order, -1), np.take_along_axis(img, order, -1),
            np.take_along_axis(pos, order, -1))


__all__ = ["IndexMeta", "PrototypeIndex", "SIDES", "Side", "StaleIndexError", "check_side", "mine_prototypes"]
