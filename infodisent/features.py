"""Feature cache: frozen backbone maps extracted once, stored as fp16 memory-mapped arrays.

One cache entry per (backbone, weights, dataset content, split, transform, views):
``<cache_root>/<key>/`` holds ``features.npy`` (rows × D × H × W, fp16),
``labels.npy``, ``indices.npy`` (dataset index of each row), ``valid.npy``
(False for unreadable images) and ``manifest.json``, written last and
atomically: an entry without it is incomplete. An interrupted extraction
(killed process) resumes from ``progress.json`` (rows finished and flushed,
and a SHA-256 of their bytes); an entry whose metadata does not match, whose
``features.npy`` has the wrong size or whose finished rows fail the checksum
is rebuilt, as is a complete entry with a damaged file (with a warning). A
lock file keeps two processes from writing one entry at once. Under ``torchrun``
every process runs the backbone on its share of the rows and rank 0 writes them.

An entry's values depend, in their last bits, on what computed them (the CPU's
kernels or the GPU, and so on): the manifest records it (``made_with``, one
record per extraction session) rather than keying on it, since results trained
from such entries agree within the tolerances the tests state (see :func:`made_with`).

Example:
    >>> cache = extract_features(backbone, dataset, "~/.cache/infodisent")
    >>> for x, y in cache.batches(64, shuffle=True, seed=0): ...
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .backbone import Backbone
from .datasets.base import ImageDataset, ImageReadError, SkippedImageWarning
from .io import CorruptFileError, atomic_save_npy, atomic_write_json, read_json, warn

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    """``$INFODISENT_CACHE`` or ``~/.cache/infodisent/features``."""
    env = os.environ.get("INFODISENT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "infodisent" / "features"


def cache_key(backbone: Backbone, dataset: ImageDataset, views: int = 1, seed: int = 0) -> dict[str, Any]:
    """What identifies a cache entry; its hash names the entry's folder."""
    key = {
        "format": FORMAT_VERSION,
        "backbone": backbone.name,
        "weights": backbone.weights.cache_id,
        "transform": backbone.transform_id,
        "dataset": dataset.name,
        "content": dataset.describe(),
        "split": dataset.split,
        "num_images": len(dataset),
        "views": views,
        "augment_seed": seed if views > 1 else None,
    }
    if backbone.model_kwargs:  # only when given, so that entries made without them keep their key
        key["model_kwargs"] = {k: repr(v) for k, v in sorted(backbone.model_kwargs.items())}
    return key


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _entry(backbone, dataset, cache_root, views: int, seed: int) -> tuple[dict[str, Any], Path]:
    """The key of ``dataset``'s cache entry and its folder under ``cache_root`` (default: :func:`default_cache_root`)."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    key = cache_key(backbone, dataset, views, seed)
    return key, root / _key_hash(key)


@dataclass
class FeatureCache:
    """A complete cache entry, memory-mapped."""

    path: Path
    features: np.ndarray  # (rows, D, H, W) float16, memory-mapped
    labels: np.ndarray  # (rows,)
    indices: np.ndarray  # (rows,) dataset index
    valid: np.ndarray  # (rows,) bool
    manifest: dict[str, Any] = field(default_factory=dict)
    extracted: bool = False  # True when this call ran the backbone (not a reuse)

    @classmethod
    def open(cls, path: Path) -> "FeatureCache":
        """A complete entry, checked: :class:`CorruptFileError` names a damaged or missing file
        (``FileNotFoundError`` when there is no manifest, i.e. the entry is incomplete)."""
        path = Path(path)
        try:
            manifest = read_json(path / "manifest.json")
        except CorruptFileError as e:
            raise _corrupt(path, "manifest.json", e.reason) from e
        shape = _manifest_shape(manifest)
        if shape is None or not isinstance(manifest.get("num_images"), int):
            raise _corrupt(path, "manifest.json", "no valid 'shape' or 'num_images'")
        features = _load_array(path, "features.npy", mmap=True)
        if features.shape != shape or features.dtype != np.float16:
            raise _corrupt(path, "features.npy", f"{features.dtype} {features.shape}, the manifest says float16 {shape}")
        arrays = {name: _load_array(path, f"{name}.npy") for name in ("labels", "indices", "valid")}
        for name, a in arrays.items():
            if a.shape != shape[:1]:
                raise _corrupt(path, f"{name}.npy", f"shape {a.shape}, expected ({shape[0]},) for {shape[0]} rows")
        if arrays["valid"].dtype != bool:
            raise _corrupt(path, "valid.npy", f"dtype {arrays['valid'].dtype}, expected bool")
        return cls(path, features, arrays["labels"], arrays["indices"], arrays["valid"], manifest)

    def __len__(self) -> int:
        return int(self.valid.sum())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.features.shape[1:])  # type: ignore[return-value]

    @property
    def bad_files(self) -> list[dict[str, str]]:
        return list(self.manifest.get("bad_files", []))

    def rows(self, view: int | None = None) -> np.ndarray:
        """Row numbers of valid rows (of one view, if given)."""
        rows = np.flatnonzero(self.valid)
        if view is not None:
            n = self.manifest["num_images"]
            rows = rows[(rows // n) == view]
        return rows

    def load(self, rows: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Features (float32) and labels of the given rows."""
        rows = np.sort(np.asarray(rows))
        x = torch.from_numpy(np.ascontiguousarray(self.features[rows])).to(device=device, dtype=torch.float32)
        return x, torch.from_numpy(self.labels[rows]).to(device)

    def map_batches(self, batch_size: int, device: torch.device | str = "cpu",
                    shard: "distributed.Shard | None" = None) -> Iterator["MapBatch"]:
        """The plain maps (view 0) of every valid image with their dataset indices, in row order:
        what :func:`stream_feature_maps` yields, read from the cache instead of the backbone
        (with ``shard``: that process's part of every block of ``world x batch_size`` rows)."""
        rows, shard = self.rows(view=0), shard or distributed.Shard()
        block = batch_size * shard.world
        for s in range(0, len(rows), block):  # one batch per block on every rank (maybe empty)
            r = shard.take(rows[s : s + block])
            yield MapBatch(self.load(r, device)[0], self.indices[r])

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rows: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches over valid rows; a seeded permutation when shuffling."""
        rows = self.rows() if rows is None else np.asarray(rows)
        if shuffle:
            rows = rows[np.random.default_rng(seed).permutation(len(rows))]
        for s in range(0, len(rows), batch_size):
            yield self.load(rows[s : s + batch_size], device)


def _corrupt(entry: Path, name: str, reason: str) -> CorruptFileError:
    return CorruptFileError(
        entry / name, reason, f"Feature cache entry {entry}: extract again to rebuild it, or delete that folder."
    )


def _manifest_shape(manifest: Any) -> tuple[int, ...] | None:
    shape = manifest.get("shape") if isinstance(manifest, dict) else None
    ok = isinstance(shape, list) and len(shape) == 4 and all(isinstance(n, int) and n >= 0 for n in shape)
    return tuple(shape) if ok else None


def _load_array(entry: Path, name: str, mmap: bool = False) -> np.ndarray:
    """One ``.npy`` file of a complete entry; a missing or unreadable one is a :class:`CorruptFileError`."""
    if not (entry / name).is_file():
        raise _corrupt(entry, name, "file missing")
    try:
        return np.load(entry / name, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:  # truncated: "mmap length is greater than file size", ...
        raise _corrupt(entry, name, f"{type(e).__name__}: {e}") from e


class _Unreadable(str):
    """``"path: reason"`` for an image that could not be read, keeping both parts."""

    def __new__(cls, path: str, reason: str) -> "_Unreadable":
        self = super().__new__(cls, f"{path}: {reason}")
        self.path, self.reason = path, reason
        return self

    def __reduce__(self):
        return (_Unreadable, (self.path, self.reason))


class _Views(torch.utils.data.Dataset):
    """Row ``r`` = view ``r // N`` of image ``r % N``; view 0 uses the evaluation transform,
    later views timm's training augmentation, seeded per (seed, row).

    An unreadable image gives the item ``(None, label, r, _Unreadable)``; this
    never raises, so that with loader workers ``strict`` is handled by the
    consuming loop (see :func:`_skip_or_raise`) and the user sees
    :class:`ImageReadError`, not torch's worker wrapper around it."""

    def __init__(self, dataset: ImageDataset, views: int, eval_tf: Callable, aug_tf: Callable | None, seed: int):
        self.dataset, self.views, self.eval_tf, self.aug_tf, self.seed = dataset, views, eval_tf, aug_tf, seed

    def __len__(self) -> int:
        return len(self.dataset) * self.views

    def __getitem__(self, r: int):
        view, i = divmod(r, len(self.dataset))
        label = int(self.dataset.labels[i])
        try:
            img = self.dataset.load_image(i)
        except ImageReadError as e:
            return None, label, r, _Unreadable(e.path, e.reason)
        if view == 0:
            x = self.eval_tf(img)
        else:
            with _seeded(self.seed * 1_000_003 + r):
                x = self.aug_tf(img)
        return x, label, r, ""


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's and Python's generators (timm's transforms use both), restoring them after."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


def _collate(items):
    good = [it for it in items if it[0] is not None]
    x = torch.stack([it[0] for it in good]) if good else None
    return x, [it[2] for it in good], [(it[2], it[3]) for it in items if it[0] is None]


def _skip_or_raise(failure: _Unreadable, strict: bool) -> None:
    """Raise :class:`ImageReadError` for an unreadable image when ``strict``, else warn that it is skipped."""
    if strict:
        raise ImageReadError(failure.path, failure.reason)
    warn(f"skipping unreadable image {failure}", SkippedImageWarning)


class MapBatch(NamedTuple):
    """One batch of :func:`stream_feature_maps`."""

    maps: torch.Tensor  # (B, D, H, W) float32
    indices: np.ndarray  # (B,) dataset index of each map


def stream_feature_maps(
    backbone: Backbone,
    dataset: ImageDataset,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    strict: bool = False,
    device: str | torch.device = "cpu",
    skipped: list[str] | None = None,
    shard: distributed.Shard | None = None,
) -> Iterator[MapBatch]:
    """Backbone maps of ``dataset`` (evaluation transform) batch by batch, without caching them
    (with ``shard``: only that process's rows).

    Unreadable images are skipped with a :class:`SkippedImageWarning` and appended
    to ``skipped`` as ``"path: reason"`` (``strict=True`` raises :class:`ImageReadError`).
    """
    views = _Views(dataset, 1, backbone.transform, None, 0)
    shard = shard or distributed.Shard()
    # this rank's part g[rank::world] of every block g of world x batch_size images (one process: the batches)
    sampler = distributed.ShardedBatchSampler(len(dataset), batch_size * shard.world, False, 0, shard)
    loader = torch.utils.data.DataLoader(views, batch_sampler=sampler, num_workers=num_workers, collate_fn=_collate)
    for x, rows, failed in loader:
        for _, failure in failed:
            _skip_or_raise(failure, strict)
            if skipped is not None:
                skipped.append(str(failure))
        if x is not None:
            with torch.inference_mode():
                f = backbone(x.to(device))
            yield MapBatch(f.float(), np.asarray(rows))
        elif shard.active:  # every rank yields once per block
            yield MapBatch(torch.zeros(0), np.zeros(0, np.int64))


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
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
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


def find_cache(
    backbone: Backbone, dataset: ImageDataset, cache_root: str | os.PathLike | None = None, views: int = 1, seed: int = 0
) -> FeatureCache | None:
    """The complete cache entry for ``dataset`` if one exists and is intact (nothing is extracted)."""
    _, path = _entry(backbone, dataset, cache_root, views, seed)
    return _open_complete(path, "ignoring it")


def _open_complete(path: Path, action: str) -> FeatureCache | None:
    """The complete entry at ``path``; None if there is none, or (with a warning) if it is damaged."""
    if not (path / "manifest.json").is_file():
        return None
    try:
        return FeatureCache.open(path)
    except CorruptFileError as e:
        warn(f"feature cache entry {path} is damaged ({e.path.name}: {e.reason}); {action}")
        return None


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
    rows_ds = _Views(dataset, views, backbone.transform, backbone.train_transform() if views > 1 else None, seed)
    todo = torch.utils.data.Subset(rows_ds, range(writer.done, writer.n_rows))
    loader = torch.utils.data.DataLoader(
        todo, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate, shuffle=False
    )
    backbone.to(device)
    bar = tqdm(total=writer.n_rows, initial=writer.done, desc=f"features {dataset.name}/{dataset.split}", unit="img",
               disable=not progress)
    for x, rows, failed in loader:
        writer.write([(rows, _maps(backbone, x, device), failed)])
        bar.update(len(rows) + len(failed))
        if on_batch is not None:
            on_batch(writer.done)
    bar.close()
    return writer.finish(dataset, views)


def made_with(device: str | torch.device, batch_size: int, processes: int = 1) -> dict[str, Any]:
    """What the values of an extraction depend on besides the key: torch, the device and its kernels
    (the CPU's instruction set, or the GPU and whether TF32 is allowed), the batch and the processes.

    These are recorded in the manifest (``made_with``, one entry per extraction session), not keyed: maps
    made with other kernels differ in their last bits (fp16 rows: about 0.15% of the values by one unit
    in the last place, 2e-5 relative), far below what head training already amplifies from any such
    difference; :mod:`tests.test_portability` trains from caches made both ways and compares the results."""
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


def _maps(backbone: Backbone, x: torch.Tensor | None, device) -> np.ndarray | None:
    """Backbone maps of a batch as float16 on the CPU (None for a batch of unreadable images only)."""
    if x is None:
        return None
    with torch.inference_mode():
        return backbone(x.to(device)).to("cpu", torch.float16).numpy()


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
            n_rows = int(meta["shape"][0])
            rows_ds = _Views(dataset, views, backbone.transform, backbone.train_transform() if views > 1 else None,
                             seed)
            todo = torch.utils.data.Subset(rows_ds, range(done, n_rows))
            sampler = distributed.ShardedBatchSampler(len(todo), batch_size * shard.world, False, 0, shard)
            loader = torch.utils.data.DataLoader(todo, batch_sampler=sampler, num_workers=num_workers,
                                                 collate_fn=_collate)
            backbone.to(device)
            bar = tqdm(total=n_rows, initial=done, desc=f"features {dataset.name}/{dataset.split}", unit="img",
                       disable=not progress or not shard.main)
            for x, rows, failed in loader:
                if strict:  # every rank hears of an unreadable image, so that all stop together
                    failures = [f for part in distributed.gather_objects(failed) for f in part]
                    if failures:
                        _skip_or_raise(failures[0][1], strict)
                pieces = distributed.gather_to_main((rows, _maps(backbone, x, device), failed))
                if writer is not None:
                    writer.write(pieces)
                    bar.update(sum(len(p[0]) + len(p[2]) for p in pieces))
                    if on_batch is not None:
                        on_batch(writer.done)
            bar.close()
            if writer is not None:
                cache = writer.finish(dataset, views)
        distributed.barrier()  # the entry is complete before any rank opens it
    if cache is None:
        cache = FeatureCache.open(path)
        cache.extracted = done is not None
    if strict and cache.bad_files:
        raise ImageReadError(cache.bad_files[0]["path"], cache.bad_files[0]["reason"])
    return cache
