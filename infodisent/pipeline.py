"""The commands behind the CLI: train (``train``, ``demo``), ``evaluate`` and ``mine``.

Floor 9 (tests/test_layout.py): above the run directory (:mod:`infodisent.run`) and every room below it;
the studies and the faces build on it.

backbone → datasets → feature cache (or streaming) → InfoDisent head and the
linear-probe reference → test accuracy of both → a run directory (file names:
:class:`~infodisent.run.RunFiles`). ``config.json`` and the head are written
last, so a directory becomes a run only once there is one; until then
``checkpoint.pt`` is what ``--resume`` continues. Commands that add results
(evaluate, mine, report) add their part to ``metrics.json`` and keep the rest.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from . import distributed
from .core.backbone import Backbone
from .core.head import InfoDisentHead
from .core.model import InfoDisent, check_compatible
from .core.weights import load_backbone
from .data.datasets import ImageDataset, from_spec
from .data.extract import extract_features
from .data.features import FeatureCache
from .data.sources import CachedSource, FeatureSource, StreamingSource, holdout_split
from .errors import InputError
from .eval.evaluation import explanation_metrics
from .eval.fidelity import agreement
from .eval.frontier import frontier_point
from .explain.prototypes import PrototypeIndex, mine_prototypes
from .io import atomic_path, atomic_write_json, read_json
from .records.data import check_split
from .records.options import FitConfig, SparseOptions
from .records.results import (
    Accuracy,
    CacheUse,
    Evaluation,
    FrontierPoint,
    KSelection,
    ProbeInfo,
    RunMetrics,
    SparseSummary,
)
from .records.run import RunConfig, RunRecord
from .records.serialize import from_dict, to_dict
from .run import Run, RunExistsError, RunFiles, open_run, save_head
from .train.checkpoints import (
    CheckpointMismatchError,
    CheckpointPaths,
    check_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .train.monitor import Monitor
from .train.probe import IN_MEMORY, fit_linear_probe
from .train.selection import BudgetWarning, HeldOut, ScaleWarning, scale_warning
from .train.sparse import refit, sparsify
from .train.teacher import BlackBox, black_box, classifier_columns, classifier_mismatch
from .train.training import classification_metrics, evaluate, fit
from .viz import sentences


@dataclass
class RunResult:
    """What a finished training produced."""

    run_dir: Path
    model: InfoDisent
    metrics: RunMetrics
    history: pd.DataFrame

    def open(self) -> Run:
        return open_run(self.run_dir)


def pooled_features(source: FeatureSource, everywhere: bool = True,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Globally average-pooled features (N, D) in ``dtype`` and labels from any source, one pass. Under
    torchrun every process gets all rows, in the one-process order; with ``everywhere=False`` only rank 0
    does (the others get None)."""
    xs, ys = [], []
    for x, y in source.batches(None):
        xs.append(x.float().mean(dim=(2, 3)).to(dtype).cpu())
        ys.append(y.cpu())
    if distributed.current().active:
        pieces = distributed.gather_objects((xs, ys)) if everywhere else distributed.gather_to_main((xs, ys))
        if pieces is None:
            return None
        xs, ys = distributed.unshard([p[0] for p in pieces]), distributed.unshard([p[1] for p in pieces])
    return torch.cat(xs), torch.cat(ys)


def _prepare_run_dir(cfg: RunConfig, files: RunFiles, backbone: str, num_classes: int) -> None:
    """Check (every process) and clear (rank 0) the run directory."""
    try:
        if distributed.current().main:
            _clear_run_dir(cfg, files, backbone, num_classes)
        error = None
    except Exception as e:  # noqa: BLE001 - every rank must hear of it, or the others wait in the gather
        error = e
    errors = [e for e in distributed.gather_objects(error) if e is not None]
    if errors:
        raise errors[0]


def _clear_run_dir(cfg: RunConfig, files: RunFiles, backbone: str, num_classes: int) -> None:
    started = files.config.is_file() or files.checkpoint.is_file()
    if started and cfg.resume:
        if files.config.is_file():
            check_compatible(RunRecord.from_dict(read_json(files.config), files.config).model, backbone, num_classes,
                             files.root)
    elif started:
        if not cfg.overwrite:
            raise RunExistsError(f"{files.root} already holds a run; pass --resume to continue it or --overwrite")
        for path in (*files.outputs(), files.report, *files.evaluations()):
            path.unlink(missing_ok=True)
        shutil.rmtree(files.prototypes_root, ignore_errors=True)
        shutil.rmtree(files.kept_root, ignore_errors=True)
    files.root.mkdir(parents=True, exist_ok=True)


@dataclass
class _Sources:
    """Where training reads features: ``train`` (without the validation images), ``test``, and for
    pruning ``importance`` (the un-augmented view of ``train``), ``validation`` (when K is chosen) and
    ``everything`` (every training image: the refit once K is chosen)."""

    train: FeatureSource
    test: FeatureSource
    importance: FeatureSource
    validation: FeatureSource | None
    caches: dict[str, FeatureCache]
    everything: FeatureSource


def _sources(cfg: RunConfig, backbone: Backbone, train_ds: ImageDataset, test_ds: ImageDataset,
             monitor: Monitor | None = None) -> _Sources:
    dev, sp = cfg.device, cfg.sparse
    fit_images = val_images = None
    if sp is not None and sp.chosen:
        fit_images, val_images = holdout_split(train_ds.labels, sp.validation, cfg.fit.seed)
    # passes without gradients take the batch the device fits (on CUDA; the training batch elsewhere)
    # rank 0's choice on every rank (each would measure its own free memory): all cut the same batches
    infer = distributed.broadcast_object(max(cfg.batch_size, backbone.inference_batch_size(dev) or 0))
    if not cfg.use_cache:
        def mk(ds, images=None, batch=cfg.batch_size):
            return StreamingSource(backbone, ds, batch, cfg.fit.seed, cfg.num_workers, dev, images,
                                   amp=cfg.fit.amp, compile=cfg.compile)
        train = mk(train_ds, fit_images)
        val = mk(train_ds, val_images, infer) if val_images is not None else None
        return _Sources(train, mk(test_ds, batch=infer), mk(train_ds, fit_images, infer), val, {},
                        mk(train_ds) if val_images is not None else train)
    caches: dict[str, FeatureCache] = {}
    for ds, views in ((train_ds, cfg.views), (test_ds, 1)):
        stage, total = f"features {ds.split}", len(ds) * views
        on_batch = (lambda done, s=stage, t=total: monitor.progress(s, done, t)) if monitor is not None else None
        caches[ds.split] = extract_features(
            backbone, ds, cfg.cache_dir, views=views, seed=cfg.fit.seed, batch_size=infer,
            num_workers=cfg.num_workers, strict=cfg.strict, progress=cfg.progress, device=dev, on_batch=on_batch,
        )
        if monitor is not None:
            monitor.progress(stage, total, total)  # also when the cache was there already
    plain = lambda images: CachedSource(caches["train"], 256, cfg.fit.seed, dev, view=0, images=images)  # noqa: E731
    return _Sources(
        train=CachedSource(caches["train"], cfg.batch_size, cfg.fit.seed, dev, images=fit_images),
        test=CachedSource(caches["test"], max(cfg.batch_size, 256), cfg.fit.seed, dev, view=0),
        importance=plain(fit_images),
        validation=plain(val_images) if val_images is not None else None,
        caches=caches,
        everything=CachedSource(caches["train"], cfg.batch_size, cfg.fit.seed, dev),
    )


def _probe(cfg: RunConfig, files: RunFiles, caches, train_src, test_src, num_classes: int, num_features: int):
    """The linear probe: pooled features of every process's rows, fitted and written by rank 0, its
    numbers sent to the others. Beyond :data:`~infodisent.train.probe.IN_MEMORY` entries (ImageNet) rank 0
    holds the pooled matrix in float16 and the probe is fitted on minibatches."""
    probe_train = CachedSource(caches["train"], 512, view=0) if caches else train_src
    big = len(probe_train) * num_features > IN_MEMORY
    train = pooled_features(probe_train, everywhere=False, dtype=torch.float16 if big else torch.float32)
    test = pooled_features(test_src, everywhere=False)
    result = None
    if distributed.current().main:
        (xtr, ytr), (xte, yte) = train, test
        probe = fit_linear_probe(xtr, ytr, num_classes, seed=cfg.fit.seed)
        with atomic_path(files.probe) as tmp:
            save_file({k: v.contiguous() for k, v in probe.linear.state_dict().items()}, str(tmp))
        with torch.no_grad():
            acc = classification_metrics(probe.linear(xte), yte)
        result = acc, ProbeInfo(probe.l2, {str(k): v for k, v in probe.validation.items()}, probe.solver)
    return distributed.broadcast_object(result)


def _check_classifier(cfg: RunConfig, backbone: Backbone, dataset: ImageDataset) -> None:
    """Before anything is trained: a classifier size asked for (``model_kwargs["num_classes"]``,
    ``--num-classes``) must be the dataset's, and ``--teacher`` needs a classifier for its classes."""
    asked = (cfg.model_kwargs or {}).get("num_classes")
    if (asked or cfg.teacher is not None) and classifier_columns(backbone, dataset) is None:
        flag = "--teacher: there is no black box to match" if cfg.teacher is not None else f"--num-classes {asked}"
        raise InputError(f"{flag}: {classifier_mismatch(backbone, dataset)}")


@dataclass
class _Setting:
    """What every step of :func:`train_run` reads: the configuration (this process's device; ``requested``: as
    given, for ``config.json``), the run directory, the backbone, both splits, the fresh head (initialised
    before the feature caches and the probe, so that whatever they draw from the seeded generator leaves
    it alone) and a checkpoint to resume."""

    cfg: RunConfig
    requested: RunConfig
    files: RunFiles
    backbone: Backbone
    train: ImageDataset
    test: ImageDataset
    head: InfoDisentHead
    checkpoint: dict | None

    @property
    def main(self) -> bool:
        return distributed.current().main

    @property
    def checkpoint_paths(self) -> CheckpointPaths:
        return CheckpointPaths(self.files.checkpoint, self.files.history)


@dataclass
class _Trained:
    """What training gave: the head shown, the history and, for a pruned run, the dense reference's accuracy,
    how K was chosen and every kept head."""

    head: InfoDisentHead
    history: pd.DataFrame
    dense: Accuracy | None = None
    dense_fit: Accuracy | None = None
    selection: KSelection | None = None
    frontier: list[FrontierPoint] = field(default_factory=list)


def _prepare(cfg: RunConfig) -> _Setting:
    """Join the process group, load the backbone and both splits, check the classifier options and the run
    directory (resume, overwrite), and warn beyond the class counts tested."""
    requested = cfg  # what config.json records (the device as asked, not this process's cuda:LOCAL_RANK)
    cfg = replace(cfg, device=distributed.setup(cfg.device))  # under torchrun: join the group
    if not distributed.current().main:
        cfg = replace(cfg, progress=False)  # one set of progress bars
    torch.manual_seed(cfg.fit.seed)
    files = RunFiles(Path(cfg.out))
    backbone = load_backbone(cfg.backbone, cfg.weights, image_size=cfg.image_size, model_kwargs=cfg.model_kwargs,
                             device=cfg.device)
    train_ds = from_spec(cfg.dataset_spec("train"))
    test_ds = from_spec(cfg.dataset_spec("test"))
    _check_classifier(cfg, backbone, train_ds)
    _prepare_run_dir(cfg, files, backbone.name, train_ds.num_classes)
    chosen = cfg.sparse is not None and cfg.sparse.chosen
    if chosen and distributed.current().main and (beyond := scale_warning(train_ds.num_classes)):
        warnings.warn(beyond, ScaleWarning, stacklevel=3)
    head = InfoDisentHead(replace(cfg.head, num_features=backbone.num_features, num_classes=train_ds.num_classes))
    ckpt = load_checkpoint(files.checkpoint) if cfg.resume else None
    return _Setting(cfg, requested, files, backbone, train_ds, test_ds, head, ckpt)


def _resume_pruned(s: _Setting) -> _Trained:
    """A checkpoint of a finished pruning: nothing is left to train; its settings must be this run's."""
    ckpt, cfg = s.checkpoint, s.cfg
    check_checkpoint(ckpt, s.head.config, s.files.checkpoint)
    recorded = ckpt.get("sparse")
    if cfg.sparse is None or _with_defaults(recorded) != _recorded_sparse(cfg.sparse):
        raise CheckpointMismatchError(
            f"{s.files.checkpoint} holds a head pruned with {recorded}; this run asks for "
            f"{asdict(cfg.sparse) if cfg.sparse else 'no pruning'} (train with --overwrite to start again)")
    selection = from_dict(KSelection, ckpt["selection"]) if ckpt.get("selection") else None
    fallback = selection is not None and selection.fallback  # the dense head, kept: no compact one kept the budget
    head = InfoDisentHead(replace(s.head.config, pruned=not fallback))
    head.load_state_dict(ckpt["head"])
    return _Trained(head.to(cfg.device), pd.read_csv(s.files.history),
                    dense=Accuracy(**ckpt["dense"]) if "dense" in ckpt else None,
                    dense_fit=Accuracy(**ckpt["dense_fit"]) if ckpt.get("dense_fit") else None,
                    selection=selection, frontier=[from_dict(FrontierPoint, p) for p in ckpt.get("frontier") or []])


@dataclass
class _Teaching:
    """What the head learns from: the labels, or mixed with the black box's logits (``RunConfig.teacher``)."""

    teacher: BlackBox | None
    fit: FitConfig
    sparse: SparseOptions | None

    @classmethod
    def of(cls, s: _Setting) -> "_Teaching":
        cfg = s.cfg
        if cfg.teacher is None:
            return cls(None, cfg.fit, cfg.sparse)
        sparse = replace(cfg.sparse, distill=cfg.teacher) if cfg.sparse is not None else None
        return cls(black_box(s.backbone, s.train), replace(cfg.fit, distill=cfg.teacher), sparse)


def _train_dense(s: _Setting, src: _Sources, how: _Teaching, monitor: Monitor | None) -> pd.DataFrame:
    """The paper's dense head (``s.head``, trained in place); resumable from its checkpoint."""
    cfg = s.cfg
    return fit(s.head, src.train, src.test, how.fit, s.checkpoint_paths,
               cfg.resume, cfg.progress, cfg.device, monitor, how.teacher)


def _prune_and_refit(s: _Setting, src: _Sources, how: _Teaching, history: pd.DataFrame,
                     monitor: Monitor | None) -> _Trained:
    """SIDE-style pruning of the dense head to K channels per class (K chosen on held-out images), the refit on
    every training image, the kept heads scored and written (the frontier), and the checkpoint of the
    finished pruning."""
    cfg, dense_head, teacher, fit_cfg, sparse_opts = s.cfg, s.head, how.teacher, how.fit, how.sparse
    if monitor is not None:  # a stop asked for during the last dense epoch: before any pruning
        monitor.check_stop(f"after epoch {cfg.fit.epochs}, before pruning; the checkpoint resumes it")
    dense = evaluate(dense_head, src.test, cfg.fit.amp)
    dense_fit = None
    pruned = sparsify(
        dense_head, sparse_opts, fit_cfg, src.train, src.importance, validation=src.validation,
        test=src.test, first_epoch=cfg.fit.epochs, progress=cfg.progress, device=cfg.device,
        monitor=monitor, teacher=teacher,
    )
    head, more, selection = pruned.head, pruned.history, pruned.selection
    kept = {k: h for k, (_, h) in pruned.candidates.items()}
    phases = [history.assign(phase="train"), more.assign(phase="prune")]
    if selection is not None and (cfg.sparse.refit_epochs > 0 or cfg.sparse.dense_reference):
        # the held-out images only chose: every training image trains the final heads
        head, dense_head, again, kept = refit(
            head, dense_head, sparse_opts, fit_cfg, src.everything, candidates=kept, lost=pruned.lost,
            test=src.test, first_epoch=int(more["epoch"].max()), progress=cfg.progress, device=cfg.device,
            monitor=monitor, teacher=teacher)
        if cfg.sparse.dense_reference:
            dense_fit, dense = dense, evaluate(dense_head, src.test, cfg.fit.amp)
        if len(again):
            phases.append(again)
    frontier = _frontier(head, dense_head, kept, pruned.candidates, selection, src.test, cfg.fit.amp)
    history = pd.concat(phases, ignore_index=True)
    if s.main:
        for point in frontier:
            save_head(dense_head if point.channels_per_class is None else kept[point.channels_per_class],
                      _kept_head_file(s.files, point.key))
        if selection is not None and not selection.within_tolerance:  # a miss, or the fallback
            warnings.warn(sentences.budget(selection), BudgetWarning, stacklevel=3)
        _save_pruned(s.checkpoint_paths, head, history, dense, dense_fit,
                     cfg.sparse, selection, frontier)
    return _Trained(head, history, dense, dense_fit, selection, frontier)


def _metrics(s: _Setting, src: _Sources, model: InfoDisent, trained: _Trained, probe: tuple,
             seconds: dict[str, float]) -> RunMetrics:
    """``metrics.json``: the head's test accuracy beside the references (the linear probe, the black box's
    agreement), what pruning did, the feature caches and the time of each stage."""
    cfg, caches = s.cfg, src.caches
    head_acc = evaluate(model.head, src.test, cfg.fit.amp)
    probe_acc, probe_info = probe
    agreed = agreement(model, s.test, caches.get("test"), batch_size=max(cfg.batch_size, 256)) \
        if classifier_columns(s.backbone, s.test) is not None else None
    return RunMetrics(
        dataset=cfg.dataset, backbone=s.backbone.name, weights=s.backbone.weights.spec,
        num_classes=s.train.num_classes, num_train_images=len(s.train), num_test_images=len(s.test),
        num_test_evaluated=len(src.test), infodisent=head_acc, linear_probe=probe_acc,
        ratio=head_acc.top1 / probe_acc.top1 if probe_acc and probe_acc.top1 else None,
        skipped_images={split: [b["path"] for b in c.bad_files] for split, c in caches.items()},
        probe=probe_info,
        feature_cache={split: CacheUse(str(c.path), not c.extracted, c.manifest.get("seconds"))
                       for split, c in caches.items()},
        seconds=seconds,
        sparse=_sparse_summary(cfg.sparse, trained.history, trained.dense, trained.dense_fit, trained.selection)
        if cfg.sparse is not None and trained.dense is not None
        else None,
        agreement=agreed,
        frontier=trained.frontier,
    )


def _write(s: _Setting, model: InfoDisent, metrics: RunMetrics) -> None:
    """The run directory, by rank 0 alone: metrics, the head, and ``config.json`` last (then it is a run)."""
    if s.main:
        atomic_write_json(s.files.metrics, to_dict(metrics))
        save_head(model.head, s.files.head)
        atomic_write_json(s.files.config, RunRecord(model.config(), s.requested).to_dict())
    distributed.barrier()  # every process returns once the run is written


def train_run(cfg: RunConfig, monitor: Monitor | None = None) -> RunResult:
    """Train a run and write its directory (``config.json`` and the head last), in steps: prepare (backbone,
    datasets, checks), the feature caches, the linear probe, the dense head, pruning and refit (the kept
    heads), the references, the files.

    Args:
        cfg: everything the run needs (:class:`~infodisent.records.run.RunConfig`).
        monitor: hears of feature extraction and of every epoch, and may stop the training after an epoch
            (:class:`~infodisent.train.monitor.TrainingStopped`; the run resumes with ``resume=True``).
            Default None.
    Returns:
        The run directory, the model, its metrics and the training history."""
    s = _prepare(cfg)
    cfg = s.cfg
    t0 = time.perf_counter()
    src = _sources(cfg, s.backbone, s.train, s.test, monitor)
    t_features = time.perf_counter() - t0

    t0 = time.perf_counter()
    probe = _probe(cfg, s.files, src.caches, src.train, src.test, s.train.num_classes, s.backbone.num_features) \
        if cfg.probe else (None, None)
    t_probe = time.perf_counter() - t0

    t0 = time.perf_counter()
    if s.checkpoint is not None and s.checkpoint.get("phase") == "pruned":
        trained = _resume_pruned(s)
    else:
        how = _Teaching.of(s)
        history = _train_dense(s, src, how, monitor)
        trained = _prune_and_refit(s, src, how, history, monitor) if cfg.sparse is not None \
            else _Trained(s.head, history)
    t_train = time.perf_counter() - t0
    model = InfoDisent(s.backbone, trained.head, s.train.classes)
    model.head.eval()
    seconds = {"features": round(t_features, 2), "linear_probe": round(t_probe, 2), "train": round(t_train, 2)}
    metrics = _metrics(s, src, model, trained, probe, seconds)
    _write(s, model, metrics)
    if monitor is not None:
        monitor.progress("done", 1, 1)
    return RunResult(s.files.root, model, metrics, trained.history)


def open_or_train(cfg: RunConfig, monitor: Monitor | None = None) -> Run:
    """The finished run at ``cfg.out`` when it was trained with this very configuration, else train it.

    A notebook that calls this opens its run in a second when run again. Where the run sits, on which
    device and with how many loader workers (``out``, ``device``, ``num_workers``, ``cache_dir``) do not
    count as a different configuration. A finished run of another configuration is replaced only with
    ``overwrite=True`` (else :class:`RunExistsError`). An interrupted one (a checkpoint, no head yet)
    continues where it stopped, with ``overwrite=True`` too; only a checkpoint of other head options
    is then started again.

    Args:
        cfg: the run's configuration.
        monitor: hears of the training if one happens (:func:`train_run`). Default None."""
    files = RunFiles(Path(cfg.out))
    if files.is_run():
        if _result_fields(read_json(files.config).get("run")) == _result_fields(cfg.recorded()):
            return open_run(cfg.out, device=cfg.device)
    elif files.checkpoint.is_file():
        try:
            train_run(replace(cfg, resume=True, overwrite=False), monitor)
            return open_run(cfg.out, device=cfg.device)
        except CheckpointMismatchError:
            if not cfg.overwrite:
                raise
    train_run(cfg, monitor)
    return open_run(cfg.out, device=cfg.device)


_PLACE_FIELDS = ("out", "device", "num_workers", "cache_dir", "compile")  # where and how fast, not what is trained


def _result_fields(recorded: dict | None) -> dict | None:
    """A recorded configuration without the fields that do not change the trained head (fields added since
    it was written taking their defaults)."""
    if recorded is None:
        return None
    try:
        recorded = RunConfig.from_recorded(recorded).recorded()
    except (TypeError, ValueError, KeyError):  # not a configuration this version can read: compare as written
        pass
    d = json.loads(json.dumps(recorded))
    for k in _PLACE_FIELDS:
        d.pop(k, None)
    return d


def _recorded_sparse(sparse: SparseOptions) -> dict:
    return {**asdict(sparse), "candidates": list(sparse.candidates), "frontier": list(sparse.frontier)}


def _with_defaults(recorded: dict | None) -> dict | None:
    """Pruning settings of a checkpoint, options added since it was written taking their defaults."""
    return None if recorded is None else {**_recorded_sparse(SparseOptions()), **recorded}


def _sparse_summary(sparse: SparseOptions, history: pd.DataFrame, dense: Accuracy, dense_fit: Accuracy | None,
                    selection: KSelection | None) -> SparseSummary:
    rounds = [int(k) for k in dict.fromkeys(history[history["phase"] == "prune"]["channels_per_class"])]
    k = selection.channels_per_class if selection is not None else sparse.channels_per_class
    refit_epochs = sparse.refit_epochs if selection is not None and selection.channels_per_class is not None else 0
    return SparseSummary(k, rounds, sparse.finetune_epochs, sparse.round_epochs, dense, selection,
                         sparse.channels_total, refit_epochs, dense_fit)


def _frontier(shown: InfoDisentHead, dense: InfoDisentHead, kept: dict[int, InfoDisentHead],
              scored: dict[int, tuple[HeldOut | None, InfoDisentHead]], selection: KSelection | None,
              test: FeatureSource, amp: bool) -> list[FrontierPoint]:
    """Every kept head scored on the test split (:func:`frontier_point`), the dense reference first."""
    held_dense = (None if selection is None else
                  {"validation_top1": selection.dense_top1, "validation_loss": selection.dense_loss})
    points = [replace(frontier_point(dense, test, None, shown=shown is dense, amp=amp), **(held_dense or {}))]
    for k in sorted(kept, reverse=True):
        points.append(frontier_point(kept[k], test, k, held=scored[k][0] if k in scored else None,
                                     shown=kept[k] is shown, amp=amp))
    return points


def _kept_head_file(files: RunFiles, key: str) -> Path:
    """Where kept head ``key`` is written (its folder made)."""
    path = files.kept(key).head
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_pruned(paths: CheckpointPaths, head: InfoDisentHead, history: pd.DataFrame, dense: Accuracy,
                 dense_fit: Accuracy | None, sparse: SparseOptions, selection: KSelection | None,
                 frontier: list[FrontierPoint]) -> None:
    """The checkpoint of a pruned run holds the pruned head (with the dense head's accuracy, the
    pruning settings, how K was chosen and the frontier, whose heads are written before it), not the dense
    one (unless no compact head kept the budget)."""
    save_checkpoint(paths, head, history, epoch=int(history["epoch"].max()), step=0, phase="pruned",
                    extra={"dense": to_dict(dense), "dense_fit": to_dict(dense_fit) if dense_fit is not None else None,
                           "sparse": _recorded_sparse(sparse),
                           "selection": to_dict(selection) if selection is not None else None,
                           "frontier": [to_dict(p) for p in frontier]})


def _score_frontier(run: Run, split: str, ds: ImageDataset, k: int, batch_size: int, progress: bool) -> None:
    """``evaluate --explanations`` on every kept head besides the one shown (its frontier point)."""
    for point in run.metrics.frontier:
        if point.shown:
            continue
        other = run.with_k(point.key)
        index = other.mine(split, k=k, batch_size=batch_size, progress=progress)
        if distributed.current().main:  # the one writer of metrics.json
            other.update_metrics(explanations=explanation_metrics(other.model, index, ds, stability=False))


def mine_run(
    run: Run | str | Path,
    split: str = "train",
    *,
    k: int = 10,
    use_cache: bool = True,
    batch_size: int = 64,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
) -> PrototypeIndex:
    """Mine the prototype index of a run's split (``infodisent mine``) into ``<run>/prototypes/<split>``:
    :meth:`Run.mine <infodisent.run.Run.mine>` of the run (opened when given as a path).

    Args:
        run: an opened run or its directory.
        split: ``"train"`` (the prototypes) or ``"test"``. Default ``"train"``.
        k: patches per channel and side. Default 10.
        use_cache: read the split's feature cache when there is one. Default True.
        batch_size: images per batch. Default 64.
        num_workers: image-loading processes when the backbone runs. Default 1.
        strict: an unreadable image is an error instead of a skipped row. Default False.
        progress: show a progress bar. Default True.
    Returns:
        The index (also kept by the run: ``run.index(split)``)."""
    run = run if isinstance(run, Run) else open_run(run)
    return run.mine(check_split(split), k=k, use_cache=use_cache, batch_size=batch_size, num_workers=num_workers,
                    strict=strict, progress=progress)


def evaluate_run(
    run: Run | str | Path,
    split: str = "test",
    *,
    dataset: str | None = None,
    root: str | None = None,
    batch_size: int = 64,
    num_workers: int = 1,
    strict: bool = False,
    progress: bool = True,
    explanations: bool = False,
    k: int = 10,
    stability: bool = True,
    frontier: bool = True,
) -> Evaluation:
    """Accuracy of a saved run (and of its linear probe) on a dataset split, with its agreement with the
    backbone's own classifier where that has the dataset's classes; written to
    ``evaluation_<dataset>_<split>.json`` (and, for the run's own test split, into ``metrics.json``, the rest
    of it kept). The sanity checks, which train, are :func:`infodisent.studies.sanity.sanity_checks`.

    Args:
        run: an opened run or its directory.
        split: the split evaluated. Default ``"test"``.
        dataset: another dataset of the run's classes (its class count must match). Default None: the
            run's own.
        root: that dataset's folder. Default None: the run's.
        batch_size: images per batch. Default 64.
        num_workers: image-loading processes. Default 1.
        strict: an unreadable image is an error instead of a skipped row. Default False.
        progress: show progress bars. Default True.
        explanations: also mine the split (``<run>/prototypes/<split>``) and add
            :func:`~infodisent.eval.evaluation.explanation_metrics`. Default False.
        k: patches per channel and side for that mining. Default 10.
        stability: include the stability metric (noisy images through the backbone). Default True.
        frontier: with ``explanations`` on the run's own test split, also mine and score every other head
            the run keeps (into its frontier point, without stability: purity and consistency place it).
            Default True.
    Returns:
        The evaluation, as written."""
    run = run if isinstance(run, Run) else open_run(run)
    ds = run.dataset(split, dataset, root)
    own = run.dataset_spec(split, dataset, root) == run.dataset_spec(split)
    cache = extract_features(run.model.backbone, ds, run.cache_dir, batch_size=batch_size,
                             num_workers=num_workers, strict=strict, progress=progress, device=run.device)
    source = CachedSource(cache, max(batch_size, 256), device=run.device, view=0)
    acc = evaluate(run.model.head, source, run.config.run.fit.amp if run.config.run is not None else True)
    probe_acc = None
    if run.probe is not None:
        x, y = pooled_features(source)
        with torch.no_grad():
            probe_acc = classification_metrics(run.probe.to(x.device)(x), y)
    ex = None
    if explanations:
        index = run.mine(split, k=k, batch_size=batch_size, progress=progress) if own else \
            mine_prototypes(run.model, ds, None, k=k, features=cache, batch_size=batch_size, device=run.device,
                            progress=progress)
        ex = explanation_metrics(run.model, index, ds, stability=stability)
        if own and split == "test" and run.files.metrics.is_file():
            if distributed.current().main:
                run.update_metrics(explanations=ex)
            if run.shown and frontier:  # every process: mining is shared under torchrun
                _score_frontier(run, split, ds, k, batch_size, progress)
    agreed = agreement(run.model, ds, cache, batch_size=max(batch_size, 256))
    own_test = own and split == "test" and run.files.metrics.is_file() and distributed.current().main and run.shown
    if own_test and agreed is not None:
        run.update_metrics(agreement=agreed)
    out = Evaluation(str(run.path), ds.name, split, len(ds), len(source), acc, probe_acc,
                     [b["path"] for b in cache.bad_files], ex, agreed)
    if distributed.current().main:
        atomic_write_json(run.head_files.evaluation(ds.name, split), to_dict(out))
    return out


__all__ = ["RunExistsError", "RunResult", "evaluate_run", "mine_run", "open_or_train", "pooled_features", "train_run"]
