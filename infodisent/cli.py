"""The ``infodisent`` command: ``demo``, ``train``, ``evaluate``, ``mine``, ``report``, ``ablate``, ``select``.

A face (the top floor, tests/test_layout.py): it may use every room; nothing in the package imports it.

argparse lives here only; each subcommand turns its arguments into the
library's dataclasses and calls one function of :mod:`infodisent.pipeline`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager, redirect_stdout
from dataclasses import replace
from typing import Sequence

import torch

from . import distributed
from .data.datasets import DATASETS
from .errors import InfodisentError, InputError
from .pipeline import evaluate_run, mine_run, train_run
from .records.model import DEFAULT_BACKBONE
from .records.options import SparseOptions
from .records.run import RunConfig, demo_config
from .records.serialize import to_dict
from .run import Run, open_run
from .viz import sentences

# a user's mistake gets a message and exit status 2; anything else is a bug and keeps its traceback
USER_ERRORS = (InfodisentError, FileNotFoundError)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=1, help="data-loading worker processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default $INFODISENT_CACHE or ~/.cache/infodisent/features)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_args(p: argparse.ArgumentParser, defaults: RunConfig) -> None:
    f = defaults.fit
    p.add_argument("--epochs", type=int, default=f.epochs)
    p.add_argument("--lr", type=float, default=f.lr, help="learning rate of W (and bias)")
    p.add_argument("--rotation-lr", type=float, default=f.rotation_lr, help="learning rate of U's parameters")
    p.add_argument("--weight-decay", type=float, default=f.weight_decay)
    p.add_argument("--seed", type=int, default=f.seed)
    p.add_argument("--views", type=int, default=defaults.views, help="cached views per training image (>1 adds augmented views)")
    p.add_argument("--orthogonal-map", choices=["cayley", "householder", "matrix_exp"], default=defaults.head.orthogonal_map)
    p.add_argument("--relaxation", choices=["none", "gumbel", "softmax"], default=defaults.head.relaxation,
                   help="the max's gradient during training: exact ('none'), Gumbel-softmax sampled, or softmax-spread "
                        "near the peak (the default; the forward pass and evaluation always use the exact max)")
    p.add_argument("--bias", action="store_true", help="add a per-class bias to the classifier")
    p.add_argument("--no-rotation", action="store_true", help="ablation: keep U fixed at the identity")
    p.add_argument("--pooling", choices=["max", "avg"], default=defaults.head.pooling,
                   help="ablation: avg replaces the two-sided max")
    p.add_argument("--unconstrained", action="store_true", help="ablation: allow negative weights in W")
    p.add_argument("--loss", choices=["softmax", "sigmoid"], default=defaults.fit.loss,
                   help="sigmoid: SIDE's one-vs-rest loss")
    p.add_argument("--teacher", type=float, nargs="?", const=1.0, default=defaults.teacher, metavar="WEIGHT",
                   help="explain the backbone's own classifier: match its logits (weight 1: them alone; below 1 "
                        "mixed with the labels). Needs a CNN backbone whose classifier has the dataset's classes "
                        "(a fine-tuned model) or reads ImageNet classes (an ImageNet subset)")
    sp = SparseOptions()
    g = p.add_argument_group(
        "compact head", "By default the dense head is pruned to K channels per class and fine-tuned; K is the "
        "smallest of --prune-candidates whose calibrated loss on held-out training images is within --loss-se "
        "standard errors of the best candidate's. When that head measurably loses more than --prune-tolerance "
        "top-1 against the dense head, larger K are tried and, when none keeps the budget, the dense head is "
        "shown, loudly.")
    g.add_argument("--dense", action="store_true", help="the paper's dense head: no pruning")
    g.add_argument("--prune-k", type=int, default=None, help="keep exactly K channels per class (no choice)")
    g.add_argument("--prune-candidates", type=int, nargs="+", default=list(sp.candidates), metavar="K",
                   help="channels per class to choose from")
    g.add_argument("--prune-tolerance", type=float, default=sp.tolerance,
                   help="the accuracy budget: top-1 the compact head may lose against the dense one (0.005: half a point)")
    g.add_argument("--no-escalate", action="store_true",
                   help="keep the chosen compact head even when it misses the budget (said loudly) instead of "
                        "trying larger K and then the dense head")
    g.add_argument("--refit-epochs", type=int, default=sp.refit_epochs,
                   help="once K is chosen, fine-tune every kept head (the chosen one and the other candidates) this "
                        "long on every training image, held-out ones included (0: no refit)")
    g.add_argument("--loss-se", type=float, default=sp.loss_se,
                   help="K: the smallest candidate within this many standard errors of the best calibrated held-out loss")
    g.add_argument("--validation", type=float, default=sp.validation,
                   help="share of each class's training images held out to choose K")
    g.add_argument("--channels-total", type=int, default=None,
                   help="one budget of channels shared by all classes (default: none)")
    g.add_argument("--finetune-epochs", type=int, default=sp.finetune_epochs,
                   help="fine-tuning epochs after the last pruning round")
    g.add_argument("--round-epochs", type=int, default=sp.round_epochs, help="fine-tuning epochs after each other round")
    g.add_argument("--prune-ratio", type=int, default=sp.ratio,
                   help="each pruning round keeps 1/ratio of the channels per class (1: prune to K at once)")
    g.add_argument("--finetune-fixed-u", action="store_true", help="fine-tune only W after pruning (U as trained)")
    g.add_argument("--frontier", type=int, nargs="*", default=list(sp.frontier),
                   help="channels per class also trained and kept beside the candidates, never chosen by the rule "
                        "(the frontier `infodisent select` picks from; none: --frontier with no value)")
    g.add_argument("--finetune-lr-min", type=float, default=sp.finetune_lr_min,
                   help="a fine-tune after pruning runs at the training rates times the share of evidence the prune "
                        "removed, at least this share of them (the refit goes on at each head's own rate)")
    p.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
    p.add_argument("--no-cache", action="store_true", help="stream images through the backbone every epoch")
    p.add_argument("--compile", action="store_true", help="streaming: run the backbone through torch.compile")
    p.add_argument("--out", default=defaults.out, help="run directory")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=list(DATASETS), default="parts")
    p.add_argument("--root", default=None, help="dataset folder (not needed for parts)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="any timm model name")
    p.add_argument("--weights", default="offline", help="offline | timm | random | PATH to .safetensors/.pth")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the backbone's own)")
    p.add_argument("--max-classes", type=int, default=None, help="use only the first N classes (quick runs)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the backbone's own classifier (default: read from a --weights file, else the "
                        "model's own); must be the dataset's for --teacher and agreement")


def _data_config(a: argparse.Namespace, **extra) -> RunConfig:
    """The RunConfig fields that :func:`_data_args` adds."""
    kwargs = {"num_classes": a.num_classes} if a.num_classes is not None else None
    return RunConfig(out=a.out, dataset=a.dataset, root=a.root, backbone=a.backbone, weights=a.weights,
                     image_size=a.image_size, max_classes=a.max_classes, model_kwargs=kwargs, **extra)


def _run_config(a: argparse.Namespace, base: RunConfig) -> RunConfig:
    fit = replace(base.fit, epochs=a.epochs, lr=a.lr, rotation_lr=a.rotation_lr, weight_decay=a.weight_decay,
                  seed=a.seed, amp=not a.no_amp, loss=a.loss)
    head = replace(base.head, orthogonal_map=a.orthogonal_map, relaxation=a.relaxation, bias=a.bias,
                   rotation=not a.no_rotation, pooling=a.pooling, nonnegative=not a.unconstrained)
    if a.dense and a.prune_k is not None:
        raise InputError("--dense and --prune-k exclude each other")
    sparse = None if a.dense else SparseOptions(
        a.prune_k, a.finetune_epochs, finetune_rotation=not a.finetune_fixed_u, ratio=a.prune_ratio,
        round_epochs=a.round_epochs, candidates=tuple(a.prune_candidates), tolerance=a.prune_tolerance,
        loss_se=a.loss_se, escalate=not a.no_escalate, refit_epochs=a.refit_epochs,
        validation=a.validation, channels_total=a.channels_total, finetune_lr_min=a.finetune_lr_min,
        frontier=tuple(a.frontier))
    return replace(
        base, out=a.out, batch_size=a.batch_size, num_workers=a.num_workers, device=a.device,
        cache_dir=a.cache_dir, strict=a.strict, progress=not a.quiet, views=a.views,
        use_cache=not a.no_cache, compile=a.compile, fit=fit, head=head, sparse=sparse, teacher=a.teacher,
    )


def _print_run(result) -> None:
    m = result.metrics
    print()
    print(m.table().to_string(float_format=lambda v: f"{v:.4f}"))
    if m.ratio is not None:
        print(f"\nInfoDisent / linear probe accuracy ratio: {m.ratio:.3f}")
    if m.sparse is not None:
        print(sentences.compactness_cost(m.sparse, m.infodisent))
        print(sentences.compact_head(m.sparse))
    if m.agreement is not None:
        print(sentences.agreement(m.agreement))
    for split, info in m.feature_cache.items():
        state = "reused (no image passed through the backbone)" if info.reused else "extracted now"
        print(f"feature cache {split}: {state} — {info.path}")
    if m.num_skipped_images:
        print(f"skipped {m.num_skipped_images} unreadable images (listed in metrics.json)")
    print(f"run directory: {result.run_dir}")


def cmd_demo(a: argparse.Namespace) -> int:
    """``infodisent demo``: train the embedded default run and print its results.

    Args:
        a: the parsed arguments of the ``demo`` subcommand.
    Returns:
        The exit status, 0."""
    _print_run(train_run(_run_config(a, demo_config(a.out))))
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """``infodisent train``: train a run on a dataset and print its results.

    Args:
        a: the parsed arguments of the ``train`` subcommand.
    Returns:
        The exit status, 0."""
    _print_run(train_run(_run_config(a, _data_config(a, resume=a.resume, overwrite=a.overwrite))))
    return 0


def _open(a: argparse.Namespace) -> Run:
    return open_run(a.run_dir, device=a.device, cache_dir=getattr(a, "cache_dir", None))


def cmd_evaluate(a: argparse.Namespace) -> int:
    """``infodisent evaluate``: evaluate a saved run on a split (and, with ``--sanity``, run the sanity checks);
    print the evaluation as JSON.

    Args:
        a: the parsed arguments of the ``evaluate`` subcommand.
    Returns:
        The exit status, 0."""
    run = _open(a)
    if a.sanity and run.dataset_spec(a.split, a.dataset, a.root) != run.dataset_spec(a.split):
        raise InputError("the sanity checks retrain on the run's own data: evaluate them on its own dataset")
    out = evaluate_run(
        run, a.split, dataset=a.dataset, root=a.root, batch_size=a.batch_size, num_workers=a.num_workers,
        strict=a.strict, progress=not a.quiet, explanations=a.explanations, k=a.k, stability=not a.no_stability,
        frontier=not a.shown_only,
    )
    if a.sanity:
        from .studies.sanity import sanity_checks

        out = replace(out, sanity=sanity_checks(run, a.split, record=True))
    print(json.dumps(to_dict(out), indent=2))
    return 0


def cmd_mine(a: argparse.Namespace) -> int:
    """``infodisent mine``: mine a split's prototype index of a saved run and say where it is.

    Args:
        a: the parsed arguments of the ``mine`` subcommand.
    Returns:
        The exit status, 0."""
    run = _open(a)
    if a.dataset is not None and a.dataset != run.dataset_spec(a.split).name:
        raise InputError("mine works on the run's own dataset; use evaluate --dataset for another one")
    index = mine_run(run, a.split, k=a.k, use_cache=not a.no_cache, batch_size=a.batch_size,
                     num_workers=a.num_workers, strict=a.strict, progress=not a.quiet)
    m = index.meta
    print(f"mined {m.num_valid} images of {m.dataset.name}/{m.dataset.split} "
          f"({m.source}, {m.seconds:.1f} s): top-{m.k} of {m.channels} channels, both sides")
    print(f"prototype index: {index.path}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    """``infodisent report``: write a run's HTML report and print its path.

    Args:
        a: the parsed arguments of the ``report`` subcommand.
    Returns:
        The exit status, 0."""
    from .viz.report import write_report  # plotly is only needed here

    path = write_report(_open(a), a.out, max_classes=a.max_classes, channels=a.channels, prototypes=a.prototypes,
                        samples=a.samples, progress=not a.quiet)
    print(f"report: {path}")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    """``infodisent select``: print a run's frontier; with ``--k`` or ``--chosen``, first make that kept head
    the one shown.

    Args:
        a: the parsed arguments of the ``select`` subcommand.
    Returns:
        The exit status, 0."""
    from .records.results import frontier_table, head_key

    run = open_run(a.run_dir)
    if a.k is not None or a.chosen:
        m = run.metrics
        if not m.frontier:
            raise InputError(f"{run.path} keeps no other head: it was trained unpruned, or before runs kept "
                             "their frontier (train it again)")
        if a.chosen:
            k = m.selected.chosen if m.selected is not None else run.channels_per_class
        elif a.k == "dense" or a.k.isdigit():
            k = None if a.k == "dense" else int(a.k)
        else:
            raise InputError(f"--k takes channels per class or 'dense', got {a.k!r}")
        run = run.select(k)
        m = run.metrics
        print(f"{run.path} now shows K={run.head_key} "
              f"(test top-1 {m.infodisent.top1:.3f}); training chose "
              f"K={head_key(m.selected.chosen) if m.selected is not None else run.head_key}"
              + (f" (`infodisent select {run.path} --chosen` shows it again)" if m.selected is not None else ""))
    if not run.metrics.frontier:
        raise InputError(f"{run.path} keeps no frontier: it was trained unpruned, or before runs kept their heads")
    print(frontier_table(run.metrics.frontier).to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


def cmd_ablate(a: argparse.Namespace) -> int:
    """``infodisent ablate``: train and evaluate the ablation grid and print its table.

    Args:
        a: the parsed arguments of the ``ablate`` subcommand.
    Returns:
        The exit status, 0."""
    from .studies.ablations import ablation_grid

    base = _run_config(a, _data_config(a))
    table = ablation_grid(base, channels_per_class=a.k_per_class, names=a.only, stability=not a.no_stability,
                          resume=a.resume)
    with_cols = [c for c in table.columns if c not in ("rotation", "pooling", "nonnegative_w", "relaxation", "loss")]
    print(table[with_cols].set_index("variant").T.to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\ntable: {a.out}/ablations.csv")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infodisent", description="InfoDisent: interpretable heads on frozen timm backbones")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on the embedded default (offline EfficientNet-Lite0, synthetic parts)")
    _common(demo)
    _train_args(demo, demo_config())

    train = sub.add_parser("train", help="train an InfoDisent head and the linear-probe reference")
    _data_args(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _common(train)
    _train_args(train, RunConfig(out="runs/train"))

    ab = sub.add_parser("ablate", help="train and evaluate the ablation grid on one dataset; writes one table")
    _data_args(ab)
    ab.add_argument("--k-per-class", type=int, default=5, help="channels per class of the fixed-K sparse variants")
    ab.add_argument("--only", nargs="+", default=None, help="run only these variants")
    ab.add_argument("--no-stability", action="store_true", help="skip the (backbone-bound) CUB stability metric")
    ab.add_argument("--resume", action="store_true",
                    help="reuse the variants' finished runs in --out (evaluate them again, train nothing finished)")
    _common(ab)
    _train_args(ab, RunConfig(out="runs/ablations"))

    ev = sub.add_parser("evaluate", help="accuracy of a saved run on a dataset split")
    ev.add_argument("run_dir")
    ev.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the run's own dataset")
    ev.add_argument("--root", default=None)
    ev.add_argument("--split", choices=["train", "test"], default="test")
    ev.add_argument("--explanations", action="store_true",
                    help="also mine the split and compute explanation size, faithfulness and part metrics")
    ev.add_argument("--k", type=int, default=10, help="prototypes per channel and side when mining")
    ev.add_argument("--no-stability", action="store_true", help="skip the (backbone-bound) CUB stability metric")
    ev.add_argument("--shown-only", action="store_true",
                    help="with --explanations: score the head shown alone, not every head of the run's frontier")
    ev.add_argument("--sanity", action="store_true",
                    help="also run the sanity checks: the backbone's last stages re-initialised (cascading) and, on "
                         "parts, a head trained on shuffled labels (Adebayo et al. 2018)")
    _common(ev)

    mine = sub.add_parser("mine", help="find every channel's top-k patches on a split (the prototype index)")
    mine.add_argument("run_dir")
    mine.add_argument("--dataset", choices=list(DATASETS), default=None, help="default: the run's own dataset")
    mine.add_argument("--split", choices=["train", "test"], default="train")
    mine.add_argument("--k", type=int, default=10, help="prototypes per channel and side")
    mine.add_argument("--no-cache", action="store_true", help="run the backbone even if a feature cache exists")
    _common(mine)

    rep = sub.add_parser("report", help="write a self-contained HTML report of a run")
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    rep.add_argument("--max-classes", type=int, default=20, help="classes with a prototype gallery")
    rep.add_argument("--channels", type=int, default=3, help="channels shown per class")
    rep.add_argument("--prototypes", type=int, default=5, help="patches shown per channel")
    rep.add_argument("--samples", type=int, default=6, help="test images explained")
    rep.add_argument("--device", default="cpu")
    rep.add_argument("--quiet", action="store_true")

    sel = sub.add_parser("select", help="print the run's accuracy-readability frontier; with --k, show that kept head")
    sel.add_argument("run_dir")
    which = sel.add_mutually_exclusive_group()
    which.add_argument("--k", default=None, help="channels per class of a kept head, or 'dense'")
    which.add_argument("--chosen", action="store_true", help="show again the head training chose")
    sel.set_defaults(func=cmd_select)

    demo.set_defaults(func=cmd_demo)
    train.set_defaults(func=cmd_train)
    ev.set_defaults(func=cmd_evaluate)
    mine.set_defaults(func=cmd_mine)
    rep.set_defaults(func=cmd_report)
    ab.set_defaults(func=cmd_ablate)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line ``infodisent: warning: ...``, without the library's source line."""
    print(f"infodisent: warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``infodisent`` command; a user's mistake (:data:`USER_ERRORS`) is printed as one line.

    Args:
        argv: the command-line arguments, without the program name. Default None: ``sys.argv[1:]``.
    Returns:
        The exit status: the subcommand's, or 2 for a user's mistake."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(), _one_voice():
        warnings.showwarning = _show_warning
        try:
            if distributed.launched() and args.command in ("mine", "evaluate"):  # train joins in train_run
                args.device = distributed.setup(args.device)
            if args.command == "report" and int(os.environ.get("RANK", "0")) != 0:
                return 0  # one process writes the report (it has no distributed part)
            return args.func(args)
        except USER_ERRORS as e:
            print(f"infodisent {args.command}: error: {e}", file=sys.stderr)
            return 2
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


@contextmanager
def _one_voice():
    """Under ``torchrun`` only rank 0 prints results (errors and warnings still come from every rank)."""
    if int(os.environ.get("RANK", "0")) == 0:
        yield
        return
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet):
        yield


if __name__ == "__main__":
    sys.exit(main())
