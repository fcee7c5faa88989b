"""Writing a feature-cache entry (the format: :mod:`.features`): :func:`extract_features` runs the frozen
backbone over a dataset once and stores its maps, resumably. One writer per entry, under a lock file; rows
are written in order, flushed and checksummed, and ``progress.json`` records how far it got, so that a
killed extraction resumes (with any number of processes) and a damaged partial entry is rebuilt. Under
``torchrun`` every process runs the backbone on its share of each block of rows and rank 0 writes them:
one loop (:func:`_fill`) serves both."""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..core.backbone import Backbone
from ..errors import CorruptFileError, InputError
from ..io import atomic_save_npy, atomic_write_json, read_json, warn
from .datasets.base import ImageDataset, ImageReadError
from .features import FeatureCache, _entry, _open_complete
from .loader import _collate, _maps, _skip_or_raise, _Views


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def extract_features(
    backbone: Backbone,
    dataset: ImageDataset,
    cache_root: str | os.PathLike | None = None,
    *,
    views: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    strict: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Extract (or reuse) the frozen feature maps of ``dataset``.

    Unreadable images are skipped with a warning and listed in the manifest's
    ``bad_files`` (``strict=True`` raises :class:`ImageReadError` instead).
    ``on_batch(rows_done)`` is called after each batch is flushed (for tests
    and progress hooks).

    Args:
        backbone: the frozen backbone whose maps are stored.
        dataset: the images.
        cache_root: the folder holding the cache entries. Default None: :func:`~.features.default_cache_root`.
        views: rows per image: view 0 uses the evaluation transform, later views the backbone's training
            augmentation. Default 1.
        seed: the seed of the augmented views (unused with one view). Default 0.
        batch_size: images per backbone batch. Default 64.
        num_workers: image-loading processes. Default 0: load in this process.
        strict: an unreadable image is an error instead of a skipped row. Default False.
        progress: show a progress bar. Default True.
        device: where the backbone runs. Default ``"cpu"``.
        on_batch: called with the number of rows done after each batch is flushed. Default None.
    Returns:
        The complete entry, memory-mapped (``extracted`` is True when this call ran the backbone).
    """
    if views < 1:
        raise InputError(f"views must be >= 1, got {views}")
    shard = distributed.current()
    if shard.active:
        return _extract_sharded(backbone, dataset, cache_root, views, seed, batch_size, num_workers, strict, progress,
                                device, on_batch, shard)
    key, path = _entry(backbone, dataset, cache_root, views, seed)
    with _locked(path.parent / f"{path.name}.lock"):
        cache = _open_complete(path, "rebuilding it")
        if cache is not None:
            if strict and cache.bad_files:
                raise ImageReadError(cache.bad_files[0]["path"], cache.bad_files[0]["reason"])
            return cache
        return _extract(backbone, dataset, path, key, views, seed, batch_size, num_workers, strict, progress, device, on_batch)


class _Partial(NamedTuple):
    """The state of an entry being written."""

    features: np.ndarray  # memory-mapped, writable
    valid: np.ndarray
    done: int  # rows finished and flushed
    bad: list[dict[str, Any]]
    digest: Any  # running hashlib.sha256 of the finished rows' bytes
    sessions: list[dict[str, Any]]  # how earlier extraction sessions of this entry computed their rows


def _start(path: Path, meta: dict[str, Any]) -> _Partial:
    """An empty entry: every file removed, the features file allocated."""
    for f in path.iterdir():
        f.unlink()
    atomic_write_json(path / "meta.json", meta)
    feats = np.lib.format.open_memmap(path / "features.npy", mode="w+", dtype=np.float16, shape=tuple(meta["shape"]))
    return _Partial(feats, np.ones(meta["shape"][0], bool), 0, [], hashlib.sha256(), [])


def _resume(path: Path, meta: dict[str, Any]) -> _Partial | None:
    """The finished part of an interrupted extraction of ``meta``; None if there is none or it fails
    its checks (then with a warning naming the entry and the problem)."""
    if not all((path / f).is_file() for f in ("meta.json", "features.npy", "progress.json")):
        return None
    try:
        if read_json(path / "meta.json") != meta:
            return None
        state = read_json(path / "progress.json")
        done, bad, recorded = int(state["rows_done"]), list(state["bad"]), state.get("sha256")
        sessions = list(state.get("sessions", []))
        valid = np.ones(meta["shape"][0], bool)
        valid[[int(b["row"]) for b in bad]] = False
        problem, digest = _check_partial(path / "features.npy", tuple(meta["shape"]), done, recorded)
    except (CorruptFileError, KeyError, TypeError, ValueError, IndexError) as e:
        problem = str(e) if isinstance(e, CorruptFileError) else f"unreadable progress.json ({e})"
    if problem is not None:
        warn(f"feature cache entry {path}: {problem}; restarting it from scratch")
        return None
    return _Partial(np.load(path / "features.npy", mmap_mode="r+"), valid, done, bad, digest, sessions)


def _check_partial(file: Path, shape: tuple[int, ...], done: int, recorded: str | None) -> tuple[str | None, Any]:
    """Check a partial ``features.npy``: its exact byte size for ``shape``, then the SHA-256 of its
    first ``done`` rows against ``recorded``. Returns the problem (None if none) and the running hash."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header_shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as e:
        return f"features.npy has an unreadable header ({e})", digest
    if header_shape != shape or fortran or dtype != np.float16:
        return f"features.npy holds {dtype} {header_shape}, expected float16 {shape}", digest
    expected = offset + int(np.prod(shape)) * 2
    size = file.stat().st_size
    if size != expected:
        return f"features.npy has {size} bytes, expected {expected} (truncated or overwritten)", digest
    if not 0 <= done <= shape[0]:
        return f"progress.json says {done} rows done, of {shape[0]}", digest
    if not isinstance(recorded, str):
        return "progress.json has no checksum of the finished rows", digest
    feats = np.load(file, mmap_mode="r")
    step = max(1, (64 << 20) // max(2, int(np.prod(shape[1:])) * 2))  # rows per 64 MiB
    for s in range(0, done, step):
        digest.update(np.ascontiguousarray(feats[s : min(done, s + step)]))
    if digest.hexdigest() != recorded:
        return f"the {done} finished rows of features.npy do not match their checksum (file damaged)", digest
    return None, digest


def _extract(backbone, dataset, path, key, views, seed, batch_size, num_workers, strict, progress, device, on_batch):
    meta = _meta(backbone, dataset, key, views)
    path.mkdir(parents=True, exist_ok=True)
    writer = _Writer(path, meta, _resume(path, meta) or _start(path, meta), strict,
                     made_with(device, batch_size, processes=1))
    if strict and writer.bad:
        raise ImageReadError(writer.bad[0]["path"], writer.bad[0]["reason"])
    _fill(writer, writer.done, backbone, dataset, views, seed, batch_size, num_workers, strict, progress, device,
          on_batch, distributed.Shard())
    return writer.finish(dataset, views)


def _fill(writer: "_Writer | None", done: int, backbone, dataset, views, seed, batch_size, num_workers, strict,
          progress, device, on_batch, shard: distributed.Shard) -> None:
    """The extraction loop, in one process or under ``torchrun``: rows ``done..`` in blocks of ``world x
    batch_size``, process ``r`` running the backbone on its part ``r::world`` of each block and the
    ``writer`` (rank 0's; None on the other ranks) writing every block in row order."""
    n_rows = len(dataset) * views
    rows_ds = _Views(dataset, views, backbone.transform, backbone.train_transform() if views > 1 else None, seed)
    todo = torch.utils.data.Subset(rows_ds, range(done, n_rows))
    sampler = distributed.ShardedBatchSampler(len(todo), batch_size * shard.world, False, 0, shard)
    loader = torch.utils.data.DataLoader(todo, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate)
    backbone.to(device)
    bar = tqdm(total=n_rows, initial=done, desc=f"features {dataset.name}/{dataset.split}", unit="img",
               disable=not progress or writer is None)
    for x, rows, failed in loader:
        piece = (rows, _maps(backbone, x, device), failed)
        if shard.active:
            if strict:  # every rank hears of an unreadable image, so that all stop together
                failures = [f for part in distributed.gather_objects(failed) for f in part]
                if failures:
                    _skip_or_raise(failures[0][1], strict)
            pieces = distributed.gather_to_main(piece)
        else:
            pieces = [piece]
        if writer is not None:
            writer.write(pieces)
            bar.update(sum(len(p[0]) + len(p[2]) for p in pieces))
            if on_batch is not None:
                on_batch(writer.done)
    bar.close()


def made_with(device: str | torch.device, batch_size: int, processes: int = 1) -> dict[str, Any]:
    """What the values of an extraction depend on besides the key: torch, the device and its kernels
    (the CPU's instruction set, or the GPU and whether TF32 is allowed), the batch and the processes.

    These are recorded in the manifest (``made_with``, one entry per extraction session), not keyed: maps
    made with other kernels differ in their last bits, far below what head training already amplifies from
    any such difference; :mod:`tests.test_portability` trains from caches made both ways and compares the
    results.

    Args:
        device: where the backbone runs.
        batch_size: images per backbone batch.
        processes: how many processes share the extraction. Default 1."""
    dev = torch.device(device)
    out: dict[str, Any] = {"torch": torch.__version__, "device": dev.type, "batch_size": int(batch_size),
                           "processes": int(processes)}
    if dev.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(dev), tf32=bool(torch.backends.cudnn.allow_tf32))
    else:
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if os.environ.get("ONEDNN_MAX_CPU_ISA"):
            out["onednn_max_cpu_isa"] = os.environ["ONEDNN_MAX_CPU_ISA"]
    return out


def _meta(backbone, dataset, key, views) -> dict[str, Any]:
    d, h, w = backbone.feature_shape()
    return {"key": key, "shape": [len(dataset) * views, d, h, w], "dtype": "float16"}


class _Writer:
    """The one writer of an entry being extracted: rows in order, flushed, checksummed, with the progress
    that a resume starts from."""

    def __init__(self, path: Path, meta: dict[str, Any], partial: _Partial, strict: bool,
                 made_with: dict[str, Any]) -> None:
        self.path, self.meta, self.strict = path, meta, strict
        self.feats, self.valid, self.done, self.bad, self.digest, sessions = partial
        self.sessions = [*sessions, {**made_with, "first_row": self.done}]
        self.n_rows = int(meta["shape"][0])
        self.t0 = time.perf_counter()

    def write(self, pieces: list[tuple[list[int], np.ndarray | None, list]]) -> None:
        """Rows ``done..done+n`` (``n``: all rows of ``pieces``, each ``(rows, maps, failures)``), then the
        progress file."""
        count = 0
        for rows, maps, failed in pieces:
            for r, failure in failed:
                _skip_or_raise(failure, self.strict)
                self.valid[r] = False
                self.feats[r] = 0
                self.bad.append({"row": r, "path": failure.path, "reason": failure.reason})
            if maps is not None:
                self.feats[rows] = maps
            count += len(rows) + len(failed)
        start, self.done = self.done, self.done + count
        self.feats.flush()
        self.digest.update(np.ascontiguousarray(self.feats[start : self.done]))
        atomic_write_json(self.path / "progress.json", {"rows_done": self.done, "bad": self.bad,
                                                        "sha256": self.digest.hexdigest(), "sessions": self.sessions})

    def finish(self, dataset: ImageDataset, views: int) -> FeatureCache:
        """Labels, indices, validity and the manifest (last): the entry is complete."""
        n = len(dataset)
        atomic_save_npy(self.path / "labels.npy", np.tile(dataset.labels, views))
        atomic_save_npy(self.path / "indices.npy", np.tile(np.arange(n), views))
        atomic_save_npy(self.path / "valid.npy", self.valid)
        del self.feats
        manifest = {
            **self.meta,
            "num_images": n,
            "classes": dataset.classes,
            "bad_files": self.bad,
            "seconds": round(time.perf_counter() - self.t0, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "made_with": self.sessions,
        }
        atomic_write_json(self.path / "manifest.json", manifest)
        (self.path / "progress.json").unlink(missing_ok=True)
        cache = FeatureCache.open(self.path)
        cache.extracted = True
        return cache


def _extract_sharded(backbone, dataset, cache_root, views, seed, batch_size, num_workers, strict, progress, device,
                     on_batch, shard: distributed.Shard) -> FeatureCache:
    """:func:`extract_features` under ``torchrun``: rank ``r`` runs the backbone on rows ``r, r + N, ...``
    of each block of ``N x batch_size`` rows and sends its maps to rank 0, the entry's only writer (which
    holds the lock, checksums and records progress as in one process, so an interrupted extraction resumes
    with any number of processes). The other ranks open the entry once it is complete."""
    key, path = _entry(backbone, dataset, cache_root, views, seed)
    meta = _meta(backbone, dataset, key, views)
    cache = writer = None
    with _locked(path.parent / f"{path.name}.lock") if shard.main else nullcontext():
        if shard.main:
            cache = _open_complete(path, "rebuilding it")
            if cache is None:
                path.mkdir(parents=True, exist_ok=True)
                writer = _Writer(path, meta, _resume(path, meta) or _start(path, meta), strict,
                                 made_with(device, batch_size, processes=shard.world))
        done = distributed.broadcast_object(None if cache is not None else writer.done if writer else None)
        if done is not None:
            _fill(writer, done, backbone, dataset, views, seed, batch_size, num_workers, strict, progress, device,
                  on_batch, shard)
            if writer is not None:
                cache = writer.finish(dataset, views)
        distributed.barrier()  # the entry is complete before any rank opens it
    if cache is None:
        cache = FeatureCache.open(path)
        cache.extracted = done is not None
    if strict and cache.bad_files:
        raise ImageReadError(cache.bad_files[0]["path"], cache.bad_files[0]["reason"])
    return cache


__all__ = ["extract_features", "made_with"]
