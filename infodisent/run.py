"""One handle on a run directory: its files, its typed configuration, and everything built from them.

Floor 8 (tests/test_layout.py): it may use every room below (records to viz); the jobs
(:mod:`infodisent.pipeline`), the studies and the faces build on it.

A run directory (written by ``infodisent train``) holds:

- ``config.json``: the model's configuration and how it was trained (:class:`~infodisent.records.run.RunRecord`)
- ``head.safetensors``: U's parameters, ``U`` and ``W`` themselves (and the bias)
- ``probe.safetensors``: the linear-probe reference
- ``metrics.json``: what training measured, plus what later commands add (:class:`~infodisent.records.results.RunMetrics`)
- ``history.csv``: one row per epoch; ``checkpoint.pt``: for ``--resume`` (after pruning: the pruned head)
- ``prototypes/<split>/``: prototype indexes; ``evaluation_<dataset>_<split>.json``; ``report.html``
- ``heads/<K>/head.safetensors`` (and ``heads/dense/``): every head a pruned run keeps, the accuracy-readability
  frontier of ``metrics.json["frontier"]`` (:meth:`Run.with_k`; ``infodisent select`` shows another one)

:class:`Run` owns these names: nothing else in the package spells them.
Everything it hands out is loaded on first use and then kept.

Example:
    >>> run = infodisent.open_run("runs/demo")
    >>> run.metrics.infodisent.top1                  # typed metrics.json
    >>> e = run.explain(17)                          # test image 17, numbers only
    >>> run.renderer().prototypes(12, n=10)          # channel 12's top training patches
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .core.head import InfoDisentHead
from .core.model import InfoDisent, RunMismatchError
from .data.datasets import ImageDataset, from_spec
from .data.features import FeatureCache, find_cache
from .data.inputs import ImageLike
from .data.loader import stream_feature_maps
from .errors import CorruptFileError, InfodisentError, InputError
from .eval.metrics import logits_of
from .explain.explanation import Explanation, explain, explain_views
from .explain.prototypes import PrototypeIndex, StaleIndexError, mine_prototypes
from .explain.render import Renderer
from .io import atomic_path, atomic_write_json, file_sha256, read_json
from .records.data import DatasetSpec, check_split
from .records.model import HeadConfig
from .records.results import RunMetrics, head_key
from .records.run import RunRecord
from .records.serialize import from_dict, to_dict


@dataclass(frozen=True)
class RunFiles:
    """The file names of a run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def head(self) -> Path:
        return self.root / "head.safetensors"

    @property
    def probe(self) -> Path:
        return self.root / "probe.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def prototypes_root(self) -> Path:
        return self.root / "prototypes"

    @property
    def kept_root(self) -> Path:
        """``heads/``: one folder per head a pruned run keeps (``heads/<K>/``, ``heads/dense/``)."""
        return self.root / "heads"

    def kept(self, key: str) -> "RunFiles":
        """The files of kept head ``key`` (a K or ``"dense"``): its ``head.safetensors``, and its own
        prototypes, evaluations and report while another head is shown.

        Args:
            key: the head's key: its K as a string, or ``"dense"``."""
        return RunFiles(self.kept_root / key)

    def prototypes(self, split: str) -> Path:
        """The folder of a split's prototype index, ``prototypes/<split>``.

        Args:
            split: ``"train"`` or ``"test"``."""
        return self.prototypes_root / check_split(split)

    def evaluation(self, dataset: str, split: str) -> Path:
        """The evaluation file of a dataset split, ``evaluation_<dataset>_<split>.json``.

        Args:
            dataset: the dataset's name (``"parts"``, ``"cub"``, ...).
            split: the split's name."""
        return self.root / f"evaluation_{dataset}_{split}.json"

    def evaluations(self) -> list[Path]:
        """Every ``evaluation_<dataset>_<split>.json`` written so far."""
        return sorted(self.root.glob("evaluation_*_*.json"))

    def outputs(self) -> tuple[Path, ...]:
        """Every file a training writes (removed by ``--overwrite``)."""
        return (self.config, self.checkpoint, self.head, self.probe, self.metrics, self.history)

    def is_run(self) -> bool:
        """True once training finished: the configuration and the head are both there."""
        return self.config.is_file() and self.head.is_file()


class NotARunError(InfodisentError, FileNotFoundError):
    """A folder that holds no finished run."""


class RunExistsError(InfodisentError, FileExistsError):
    """A run directory that already holds a run (use --resume or --overwrite)."""


class Run:
    """A saved run: typed configuration and metrics, and lazily built model, datasets, caches, indexes, renderers.

    Args:
        path: the run directory.
        device: where the model lives. Default ``"cpu"``.
        weights: overrides the recorded backbone weights (e.g. a local file on another machine). Default None:
            the recorded source.
        cache_dir: the feature cache root. Default None: the one the run was trained with.
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", weights: str | None = None,
                 cache_dir: str | None = None):
        self.path = Path(path)
        self.files = RunFiles(self.path)
        self.head_files = self.files  # where this handle's head and what belongs to it live (see with_k)
        self.kept_key: str | None = None  # with_k: the kept head this handle shows instead of head.safetensors
        self._kept_runs: dict[str, Run] = {}
        self._parent: Run | None = None
        if not self.files.is_run():
            missing = [p.name for p in (self.files.config, self.files.head) if not p.is_file()]
            what = "does not exist" if not self.path.exists() else \
                f"is not an InfoDisent run directory (missing {', '.join(missing)})"
            where = "" if self.path.is_absolute() else (
                f"; a relative path is read from the current folder, {Path.cwd()} (a notebook's kernel starts in "
                "the notebook's own folder; `make demo` writes runs/demo at the repository root)")
            raise NotARunError(f"{self.path} {what}{where}")
        self.config = RunRecord.from_dict(read_json(self.files.config), self.files.config)
        self.device = torch.device(device)
        self._weights = weights
        recorded = self.config.run.cache_dir if self.config.run is not None else None
        self.cache_dir = cache_dir if cache_dir is not None else recorded
        self._datasets: dict[tuple, ImageDataset] = {}
        self._caches: dict[str, FeatureCache | None] = {}
        self._indexes: dict[str, PrototypeIndex] = {}
        self._renderers: dict[str, Renderer] = {}
        self._metrics: RunMetrics | None = None

    def __repr__(self) -> str:
        c = self.config.model
        return (f"Run({str(self.path)!r}: {c.backbone.name}, {c.num_classes} classes, "
                f"{c.backbone.num_features} channels)")

    # ------------------------------------------------------------------ the model

    @cached_property
    def model(self) -> InfoDisent:
        """The backbone and the trained head (loaded on first use)."""
        self._model_sha256 = self.head_sha256()
        if self._parent is not None:  # another head of the same run: the backbone is the same
            head = load_head(self.head_files.head, self.config.model.head).to(self.device)
            return InfoDisent(self._parent.model.backbone, head, list(self.class_names))
        head = load_head(self.head_files.head, self.config.model.head)
        return InfoDisent.build(self.config.model, head, device=self.device, weights=self._weights)

    # ------------------------------------------------------------------ the frontier: every head the run keeps

    @property
    def channels_per_class(self) -> int | None:
        """K of the head this handle shows (None: a dense head)."""
        m = self.config.model
        return m.channels_per_class if m.head.pruned else None

    @property
    def head_key(self) -> str:
        """The shown head's key among the kept ones: its K, or ``"dense"``."""
        return head_key(self.channels_per_class)

    def with_k(self, k: int | str | None) -> "Run":
        """The same run with another of its kept heads (``metrics.json["frontier"]``): ``k`` channels per class,
        or ``"dense"`` (or None) for the dense reference. Everything a :class:`Run` does works on it: its
        model shares this one's backbone, datasets and feature caches; its prototype indexes, evaluations and
        report are its own (``heads/<K>/``), mined when first needed. Nothing on disk changes
        (``infodisent select`` makes another head the one shown). The handle is kept: asking again is free.

        Args:
            k: channels per class of a kept head, ``"dense"`` or None.
        """
        point = self.metrics.point(k)
        root = self._parent or self
        if point.shown:
            return root
        if point.key not in root._kept_runs:
            head_files = root.files.kept(point.key)
            if not head_files.head.is_file():
                raise NotARunError(f"{head_files.head} is missing: the head K={point.key} of "
                                   f"{root.path}'s frontier was not kept")
            other = root._reopen()
            other._parent, other.kept_key, other.head_files = root, point.key, head_files
            other.config = _with_k(root.config, point.channels_per_class)
            other._datasets, other._caches = root._datasets, root._caches  # the same images
            root._kept_runs[point.key] = other
        return root._kept_runs[point.key]

    def select(self, k: int | str | None) -> "Run":
        """Make kept head ``k`` (channels per class, ``"dense"`` or None) the run's head: ``head.safetensors``,
        ``config.json``'s K and ``metrics.json``'s test accuracy become its, and ``metrics.json["selected"]``
        records the choice next to what training chose (cleared when that is selected again: the choice is
        reversible). The prototypes, evaluations and report of the head shown until now move to its
        ``heads/<K>/`` folder, and the new head's come back from there (mined when first needed). Returns the
        run opened afresh (this handle, and widgets built on it, still show the old head).

        Args:
            k: channels per class of a kept head, ``"dense"`` or None.
        """
        from .records.results import Selected

        root = self._parent or self
        metrics = root.metrics
        new, old = metrics.point(k), next((p for p in metrics.frontier if p.shown), None)
        if old is None:
            raise InputError(f"{root.path}'s frontier marks no head as shown: retrain it to keep its heads")
        if new.key == old.key:
            return root._reopen()
        there, here = root.files.kept(new.key), root.files.kept(old.key)
        if not there.head.is_file():
            raise NotARunError(f"{there.head} is missing: the head K={new.key} was not kept")
        for path in (*here.evaluations(), here.report):  # stale leftovers of an earlier selection
            path.unlink(missing_ok=True)
        for src, dst in (*_owned(root.files, here), *_owned(there, root.files)):
            if dst.is_dir():  # an index mined for this head earlier, under the other name: this one is newer
                shutil.rmtree(dst)
            src.replace(dst)
        tmp = root.files.head.with_name(root.files.head.name + ".tmp")
        shutil.copyfile(there.head, tmp)
        tmp.replace(root.files.head)
        atomic_write_json(root.files.config, _with_k(root.config, new.channels_per_class).to_dict())
        chosen = metrics.selected.chosen if metrics.selected is not None else old.channels_per_class
        frontier = [replace(p, shown=p.key == new.key) for p in metrics.frontier]
        updated = replace(metrics.with_head(new), frontier=frontier,
                          selected=None if new.channels_per_class == chosen else Selected(new.channels_per_class,
                                                                                          chosen))
        atomic_write_json(root.files.metrics, to_dict(updated))
        return root._reopen()

    def _reopen(self) -> "Run":
        """This run directory opened afresh, with this handle's device, weights and cache root."""
        return Run(self.path, device=self.device, weights=self._weights, cache_dir=self.cache_dir)

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the head file :attr:`model` was loaded from (what mined indexes record)."""
        self.model  # noqa: B018 - loads it
        return self._model_sha256

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.model.class_names

    def head_sha256(self) -> str:
        """SHA-256 of the head file (``head.safetensors``, or a kept head's) as it is on disk now."""
        return file_sha256(self.head_files.head)

    @cached_property
    def probe(self) -> torch.nn.Linear | None:
        """The linear-probe reference (on average-pooled backbone maps), or None when the run has none."""
        if not self.files.probe.is_file():
            return None
        try:
            state = load_file(str(self.files.probe))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise CorruptFileError(self.files.probe, str(e)) from None
        lin = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        lin.load_state_dict(state)
        return lin

    # ------------------------------------------------------------------ data

    def dataset_spec(self, split: str = "test", name: str | None = None, root: str | None = None) -> DatasetSpec:
        """How to build a split of the run's own dataset, or of another one (``name``, ``root``) with its classes.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"test"``.
            name: another dataset's name. Default None: the run's own.
            root: the dataset's folder (for the run's own dataset: where it lies now). Default None: the
                recorded one."""
        run = self.config.run
        if run is None and name is None:
            raise InputError(f"{self.path} does not record its dataset; pass name= and root=")
        if name is None or (run is not None and name == run.dataset):
            spec = run.dataset_spec(check_split(split))  # type: ignore[union-attr]
            return spec if root is None else replace(spec, root=str(root))  # e.g. the data moved
        return DatasetSpec(name, root, check_split(split), self.config.model.num_classes)

    def dataset(self, split: str = "test", name: str | None = None, root: str | None = None) -> ImageDataset:
        """A split of the run's dataset (the one way to rebuild it), checked against the run's classes.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"test"``.
            name: another dataset of the run's classes. Default None: the run's own.
            root: the dataset's folder. Default None: the recorded one."""
        spec = self.dataset_spec(split, name, root)
        key = (spec.name, spec.root, spec.split)
        if key not in self._datasets:
            ds = from_spec(spec)
            if ds.num_classes != self.config.model.num_classes:
                raise RunMismatchError(f"{self.path} has {self.config.model.num_classes} classes; the {spec.name} dataset "
                                       f"at {spec.root} has {ds.num_classes}")
            self._datasets[key] = ds
        return self._datasets[key]

    def cache(self, split: str = "train") -> FeatureCache | None:
        """The split's feature-cache entry if one exists (nothing is extracted): the one training
        wrote (with its augmented views, whose view 0 is the plain image), else a one-view entry.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``."""
        if split not in self._caches:
            backbone, ds, run = self.model.backbone, self.dataset(split), self.config.run
            found = None
            if split == "train" and run is not None and run.views > 1:
                found = find_cache(backbone, ds, self.cache_dir, views=run.views, seed=run.fit.seed)
            self._caches[split] = found or find_cache(backbone, ds, self.cache_dir)
        return self._caches[split]

    def features(self, split: str = "train", *, progress: bool = False) -> FeatureCache:
        """The split's feature-cache entry (:meth:`cache`), extracted now (one pass of its images through the
        backbone, into the run's cache root) when there is none: what retraining a head on the run's data reads.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``.
            progress: show a progress bar while extracting. Default False."""
        found = self.cache(split)
        if found is None:
            from .data.extract import extract_features

            found = extract_features(self.model.backbone, self.dataset(split), self.cache_dir, progress=progress,
                                     device=self.device)
            self._caches[split] = found
        return found

    # ------------------------------------------------------------------ prototypes and pictures

    def has_index(self, split: str = "train") -> bool:
        """Whether the split has a prototype index on disk (fresh or not: :meth:`index` checks that).

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``."""
        return (self.head_files.prototypes(split) / "meta.json").is_file()

    def index(self, split: str = "train") -> PrototypeIndex:
        """The split's prototype index; :class:`StaleIndexError` when the head changed since it was mined.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``."""
        if split not in self._indexes:
            folder = self.head_files.prototypes(split)
            if not self.has_index(split):
                raise FileNotFoundError(
                    f"no prototype index at {folder}; create it with `infodisent mine {self.path} --split {split}`")
            try:
                self._indexes[split] = PrototypeIndex.load(folder, head_sha256=self.head_sha256())
            except StaleIndexError as e:
                raise StaleIndexError(f"{e}; re-run `infodisent mine {self.path} --split {split}`") from None
        return self._indexes[split]

    def mine(self, split: str = "train", *, k: int = 10, use_cache: bool = True, batch_size: int = 64,
             num_workers: int = 1, strict: bool = False, progress: bool = True) -> PrototypeIndex:
        """Mine ``split``'s prototype index into ``<run>/prototypes/<split>`` (``infodisent mine``), from the
        feature cache when there is one (``use_cache``), and keep it: the split's renderer starts afresh.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``.
            k: patches kept per channel and side. Default 10.
            use_cache: read the split's feature cache when there is one. Default True.
            batch_size: images per batch when the backbone runs. Default 64.
            num_workers: image-loading processes. Default 1.
            strict: an unreadable image is an error instead of a skipped row. Default False.
            progress: show progress bars. Default True."""
        index = mine_prototypes(
            self.model, self.dataset(split), self.head_files.prototypes(split), k=k,
            features=self.cache(split) if use_cache else None, batch_size=batch_size, num_workers=num_workers,
            device=self.device, strict=strict, progress=progress, head_sha256=self.model_sha256,
        )
        self._indexes[split] = index
        self._renderers.pop(split, None)
        return index

    def renderer(self, split: str = "train") -> Renderer:
        """Prototype patches of ``split``'s index and evidence pictures, with LRU caches (kept per split).

        Args:
            split: ``"train"`` or ``"test"``. Default ``"train"``."""
        if split not in self._renderers:
            self._renderers[split] = Renderer(
                self.model, self.dataset(split), index=lambda: self.index(split), features=self.cache(split))
        return self._renderers[split]

    def explain(self, images: int | Sequence[int] | ImageLike | Sequence[ImageLike], target: int | Sequence[int] | None = None,
                *, split: str = "test") -> Explanation:
        """Explain images of the run's ``split`` (dataset indices) or any images (PIL, paths, tensors).

        Dataset images are read through the split's renderer, so a second explanation of the
        same image reads nothing from disk.

        Args:
            images: one dataset index or a sequence of them (a range, an integer array), or one image or a
                sequence of images (PIL images, paths, tensors).
            target: the class explained: an int for every image, a sequence of one per image. Default None:
                each image's predicted class.
            split: the split dataset indices refer to. Default ``"test"``.
        """
        if isinstance(images, (range, np.ndarray)) and np.asarray(images).ndim == 1 \
                and np.issubdtype(np.asarray(images).dtype, np.integer):
            images = [int(i) for i in images]
        if _is_index(images) or (isinstance(images, (list, tuple)) and images and all(_is_index(i) for i in images)):
            idx = [int(images)] if _is_index(images) else [int(i) for i in images]  # type: ignore[arg-type]
            ds = self.dataset(split)
            bad = [i for i in idx if not 0 <= i < len(ds)]
            if bad:
                raise InputError(f"image {bad[0]} is outside the {split} split (0..{len(ds) - 1})")
            r = self.renderer(split)
            views = [r.view(i) for i in idx]
            return explain_views(self.model, views, target, sources=idx, labels=[int(ds.labels[i]) for i in idx])
        return explain(self.model, images, target)

    @torch.no_grad()
    def predictions(self, split: str = "test") -> pd.DataFrame:
        """Every image of a split: ``image``, ``label``, ``predicted``, ``correct``, ``probability`` (of the
        prediction) and ``logit_margin`` (its logit minus the runner-up's). From the split's prototype
        index when there is a fresh one, else its feature cache (then through the head), else the backbone.

        Args:
            split: ``"train"`` or ``"test"``. Default ``"test"``."""
        ds = self.dataset(split)
        W = self.model.W.double().cpu().numpy()
        bias = None if self.model.bias is None else self.model.bias.double().cpu().numpy()
        try:
            index = self.index(split)
            images = np.flatnonzero(index.valid)
            logits = logits_of(index.v[images], W, bias)
        except (FileNotFoundError, StaleIndexError):
            cache = self.cache(split)
            batches = cache.map_batches(256, self.device) if cache is not None else \
                stream_feature_maps(self.model.backbone, ds, device=self.device)
            head = self.model.head.eval()
            parts, found = [], []
            for x, idx in batches:
                parts.append(head.forward_details(x.float()).logits.double().cpu().numpy())
                found.append(idx)
            images = np.concatenate(found) if found else np.zeros(0, np.int64)
            logits = np.concatenate(parts) if parts else np.zeros((0, len(W)))
        order = np.argsort(-logits, axis=1, kind="stable")
        top = logits[np.arange(len(logits)), order[:, 0]]
        second = logits[np.arange(len(logits)), order[:, 1]] if logits.shape[1] > 1 else top
        p = np.exp(logits - top[:, None])
        labels = np.asarray(ds.labels)[images]
        return pd.DataFrame({
            "image": images, "label": labels, "predicted": order[:, 0], "correct": order[:, 0] == labels,
            "probability": 1.0 / p.sum(1), "logit_margin": top - second,
        })

    # ------------------------------------------------------------------ results

    @property
    def metrics(self) -> RunMetrics:
        """``metrics.json`` as :class:`~infodisent.records.results.RunMetrics` (read once). On a kept head
        (:meth:`with_k`): the run's, with that head's test accuracy and explanation metrics, and without
        what was measured on the head shown (agreement, sanity checks)."""
        if self._metrics is None:
            self._metrics = self._read_metrics()
            if self.kept_key is not None:
                self._metrics = self._metrics.with_head(self._metrics.point(self.kept_key))
        return self._metrics

    def _read_metrics(self) -> RunMetrics:
        if not self.files.metrics.is_file():
            raise FileNotFoundError(f"{self.files.metrics} does not exist (training did not finish?)")
        data = read_json(self.files.metrics)
        try:
            return from_dict(RunMetrics, data)
        except (TypeError, ValueError, KeyError) as e:
            raise CorruptFileError(self.files.metrics, f"not this version's metrics ({e})") from None

    @property
    def shown(self) -> bool:
        """Whether this handle's head is the one in ``head.safetensors`` (not another kept head, :meth:`with_k`)."""
        return self.kept_key is None

    def update_metrics(self, **parts: Any) -> RunMetrics:
        """Set some fields of ``metrics.json`` (e.g. ``explanations=...``), keeping what other commands wrote.
        ``explanations`` also goes to the frontier's point of this handle's head; on a kept head
        (:meth:`with_k`) it is the one field recorded (the others are of the head shown).

        Args:
            **parts: :class:`~infodisent.records.results.RunMetrics` fields and their new values.
        Returns:
            The metrics as written."""
        if self.files.metrics.is_file():
            data = read_json(self.files.metrics)
        else:
            raise FileNotFoundError(f"{self.files.metrics} does not exist: nothing to add to")
        if self.kept_key is not None and set(parts) - {"explanations"}:
            raise InputError(f"only explanations are recorded for a kept head (K={self.kept_key}); "
                             f"{', '.join(sorted(set(parts) - {'explanations'}))} belong to the head shown")
        if "explanations" in parts:
            for point in data.get("frontier") or []:
                key = head_key(point.get("channels_per_class"))
                if key == self.kept_key or (self.kept_key is None and point.get("shown")):
                    point["explanations"] = to_dict(parts["explanations"])
        if self.kept_key is None:
            data.update({k: to_dict(v) for k, v in parts.items()})
        metrics = from_dict(RunMetrics, data)
        atomic_write_json(self.files.metrics, data)
        (self._parent or self)._metrics = None
        for other in (self._parent or self)._kept_runs.values():
            other._metrics = None
        self._metrics = None
        return metrics

    @property
    def history(self) -> pd.DataFrame:
        """One row per epoch (``phase`` says training or pruning rounds)."""
        if not self.files.history.is_file():
            raise FileNotFoundError(f"{self.files.history} does not exist")
        return pd.read_csv(self.files.history)


def head_tensors(head: InfoDisentHead) -> dict[str, torch.Tensor]:
    """The head's state dict plus the materialised ``U`` and ``W`` (for readers without torch's parametrizations).

    Args:
        head: the head; its tensors are copied to the CPU."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors["U"] = head.U.detach().cpu().clone().contiguous()
    tensors["W"] = head.W.detach().cpu().clone().contiguous()
    return tensors


def save_head(head: InfoDisentHead, path: Path) -> None:
    """Write ``head.safetensors`` atomically: the head's state and the materialised ``U`` and ``W``.

    Args:
        head: the head to save.
        path: the file."""
    with atomic_path(path) as tmp:
        save_file(head_tensors(head), str(tmp))


def load_head(path: Path, config: HeadConfig) -> InfoDisentHead:
    """Read ``head.safetensors``; a damaged file or a head of another shape gets an error naming the file.

    Args:
        path: the file.
        config: the head it should hold (``config.json``'s ``head``)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(path, f"not a readable safetensors file ({e})",
                               "the run's head is lost: retrain it (infodisent train ... --overwrite)") from None
    head = InfoDisentHead(config)
    W = tensors.get("W")
    if W is None or W.ndim != 2:
        raise CorruptFileError(path, "it holds no classifier matrix W")
    if tuple(W.shape) != (config.num_classes, config.num_features):
        raise RunMismatchError(
            f"{path} holds a head for {W.shape[0]} classes and {W.shape[1]} channels; its config.json says "
            f"{config.num_classes} classes and {config.num_features} channels"
        )
    state = {k: v for k, v in tensors.items() if k not in ("U", "W")}
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise RunMismatchError(f"{path} does not fit the head described by config.json "
                               f"({str(e).splitlines()[-1].strip()[:200]})") from None
    head.eval()
    U, _ = head.inference_weights()  # formed once here, and kept for inference until a parameter changes
    if "U" in tensors and not torch.allclose(U, tensors["U"], atol=1e-4):
        raise CorruptFileError(path, "its stored U does not match its parameters")
    return head


def _with_k(config: RunRecord, k: int | None) -> RunRecord:
    """``config`` for kept head ``k`` of the same run (None: the dense one)."""
    m = config.model
    return replace(config, model=replace(m, channels_per_class=k, head=replace(m.head, pruned=k is not None)))


def _owned(src: RunFiles, dst: RunFiles) -> list[tuple[Path, Path]]:
    """What belongs to the head in ``src`` (prototype indexes, evaluations, the report), with where each goes
    in ``dst``."""
    paths = [p for p in (src.prototypes_root, *src.evaluations(), src.report) if p.exists()]
    dst.root.mkdir(parents=True, exist_ok=True)
    return [(p, dst.root / p.name) for p in paths]


def _is_index(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def open_run(path: str | Path, *, device: str | torch.device = "cpu", weights: str | None = None,
             cache_dir: str | None = None) -> Run:
    """Open a run directory: ``infodisent.open_run("runs/demo")``, the same as ``Run(path, ...)``.

    Args:
        path: the run directory.
        device: where the model lives. Default ``"cpu"``.
        weights: overrides the recorded backbone weights (e.g. a local file on another machine). Default None.
        cache_dir: the feature cache root. Default None: the one the run was trained with."""
    return Run(path, device=device, weights=weights, cache_dir=cache_dir)


__all__ = ["NotARunError", "Run", "RunFiles", "load_head", "open_run", "save_head"]
