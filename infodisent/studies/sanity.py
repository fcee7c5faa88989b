"""Sanity checks for explanations (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation worth reading depends on what the model learnt. Two checks break that on purpose:

- **Model randomisation** (:func:`model_randomisation`): the backbone's last stages are re-initialised,
  one more at each level of the cascade, the trained head kept; the channel maps of the same images and
  the ranking of their contributions are compared with the trained model's (Spearman rank correlation,
  SSIM). Maps that stay alike would show the input, not the model.
- **Label randomisation** (:func:`label_randomisation`): a head is trained as the run's was on the training
  images with shuffled labels; its part purity and pointing game should fall to what a head that never saw a
  label gives (the same head untrained), and far below the trained run's. With a frozen backbone that is
  not random chance: the backbone's channels fire on objects before any head is trained.

A stage is what timm's ``feature_info`` names (ResNet's ``layer4``; EfficientNet's ``blocks.6``) together
with the modules after it up to the next one (EfficientNet's last stage holds ``conv_head`` and ``bn2``).

Example:
    >>> checks = sanity_checks(infodisent.open_run("runs/demo"))
    >>> checks.model[0].map_spearman, checks.labels.purity, checks.labels.purity_chance
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import nn

from .. import distributed
from ..core.backbone import Backbone
from ..core.geometry import upsample_map
from ..core.head import InfoDisentHead
from ..core.model import InfoDisent
from ..data.sources import CachedSource
from ..errors import InputError
from ..eval.part_metrics import cell_parts, parts_purity, pointing_game
from ..explain.explanation import explain
from ..explain.prototypes import mine_prototypes
from ..io import atomic_write_json, read_json
from ..records.options import WEIGHT_THRESHOLD, SparseOptions
from ..records.results import Evaluation, LabelRandomisation, Randomised, SanityChecks
from ..records.serialize import from_dict, to_dict
from ..run import Run
from ..train.sparse import prune_head, sparsify
from ..train.training import fit


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """The names of the parameterised modules of each stage of a timm model, first stage first (the classifier
    left out): stage ``i`` starts at ``feature_info[i]``'s module and runs to the next one's.

    Args:
        model: the timm model; it must name its stages in ``feature_info``."""
    info = getattr(model, "feature_info", None)
    starts = [f["module"] for f in info] if info is not None else []
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(m) for m in classifier.modules()} if isinstance(classifier, nn.Module) else set()
    leaves = [(n, m) for n, m in model.named_modules()
              if id(m) not in skip and any(True for _ in m.parameters(recurse=False))]
    if not starts or not leaves:
        raise InputError(f"{type(model).__name__} names no stages (timm's feature_info): cannot randomise by stage")
    stages: list[list[str]] = [[] for _ in starts]
    current = 0
    for name, _ in leaves:
        while current + 1 < len(starts) and (name == starts[current + 1] or name.startswith(starts[current + 1] + ".")):
            current += 1
        stages[current].append(name)
    return [s for s in stages if s]


def randomise(model: nn.Module, stages: int, seed: int = 0) -> tuple[nn.Module, int]:
    """A copy of ``model`` with its last ``stages`` stages re-initialised (each module's ``reset_parameters``,
    BatchNorm statistics reset too), seeded; returns it and how many modules were reset.

    Args:
        model: the timm model; it is left unchanged.
        stages: how many of its last stages are re-initialised, in ``1..`` its number of stages.
        seed: the torch seed of the new weights. Default 0.
    Returns:
        ``(copy, modules)``: the copy in eval mode and the number of modules re-initialised."""
    all_stages = backbone_stages(model)
    if not 1 <= stages <= len(all_stages):
        raise InputError(f"{type(model).__name__} has {len(all_stages)} stages; cannot randomise {stages}")
    out = copy.deepcopy(model)
    names = {n for s in all_stages[-stages:] for n in s}
    modules = dict(out.named_modules())
    torch.manual_seed(seed)
    count = 0
    for name in sorted(names):
        m = modules[name]
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            count += 1
        else:  # a module with bare parameters (a layer scale, a token): from N(0, 0.02)
            for p in m.parameters(recurse=False):
                nn.init.normal_(p, std=0.02)
            count += 1
    return out.eval(), count


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr  # here: scipy.stats is slow to import, and only this check needs it

    return float(spearmanr(a.ravel(), b.ravel()).statistic)


@torch.no_grad()
def model_randomisation(run: Run, split: str = "test", *, images: int = 32, channels: int = 3, cascade: int = 3,
                        seed: int = 0) -> tuple[list[Randomised], int]:
    """The model randomisation check on ``images`` images of ``split`` (a seeded choice), comparing each
    image's ``channels`` strongest channels (by the size of their contribution to the predicted class), for
    the last 1, 2, ..., ``cascade`` stages re-initialised. Returns the levels and the images compared.

    Args:
        run: the run checked; its backbone is copied, its trained head kept.
        split: the split the images come from. Default ``"test"``.
        images: how many images are compared (all of the split's when it has fewer). Default 32.
        channels: the strongest channels per image whose maps are compared. Default 3.
        cascade: the most stages re-initialised (at most the backbone's number of stages). Default 3.
        seed: seeds the choice of images and the new weights. Default 0."""
    ds = run.dataset(split)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(ds), size=min(images, len(ds)), replace=False))
    pictures = [ds.load_image(int(i)) for i in chosen]
    labels = np.asarray(ds.labels)[chosen]
    model = run.model
    trained = explain(model, pictures)
    W = trained.W
    levels = []
    n_stages = len(backbone_stages(model.backbone.model))
    for level in range(1, min(cascade, n_stages) + 1):
        bb = model.backbone
        net, count = randomise(bb.model, level, seed)
        backbone = Backbone(net, bb.name, bb.weights, bb.data_config, bb.model_kwargs)  # same transform, new maps
        other = explain(InfoDisent(backbone, model.head, model.class_names), pictures,
                        target=trained.predictions.tolist())
        maps, ssims, ranks = [], [], []
        for b in range(len(pictures)):
            pred = int(trained.predictions[b])
            contrib = trained.contributions[b]
            top = np.argsort(-np.abs(contrib), kind="stable")[:channels]
            view = trained.views[b].size
            for d in top:
                a, o = trained.J[b, d], other.J[b, d]
                maps.append(_spearman(a, o))
                ua, uo = _minmax(upsample_map(a, view)), _minmax(upsample_map(o, view))
                ssims.append(float(structural_similarity(ua, uo, data_range=1.0)))
            used = np.flatnonzero(W[pred] > WEIGHT_THRESHOLD)
            if len(used) > 1:
                ranks.append(_spearman(contrib[used], other.contributions[b][used]))
        levels.append(Randomised(
            stages=level, modules=count, map_spearman=float(np.nanmean(maps)), map_ssim=float(np.mean(ssims)),
            ranking_spearman=float(np.nanmean(ranks)) if ranks else float("nan"),
            top1=float((other.logits.argmax(1) == labels).mean())))
    return levels, len(chosen)


def purity_chance(dataset, transform, grid: tuple[int, int], channels: int, k: int, seed: int = 0) -> float:
    """The purity of ``channels`` made-up channels whose ``k`` patches lie at random cells of random images of
    ``dataset`` (scored as :func:`~infodisent.eval.part_metrics.parts_purity` scores a channel).

    Args:
        dataset: a dataset with part masks (the synthetic ``parts`` dataset).
        transform: the model's evaluation transform (it places the cells on the images).
        grid: the feature map's ``(H, W)``.
        channels: how many made-up channels are scored.
        k: patches per channel.
        seed: seeds the random images and cells. Default 0.
    Returns:
        The mean purity over the made-up channels."""
    rng = np.random.default_rng(seed)
    gh, gw = grid
    images = rng.integers(0, len(dataset), size=(channels, k))
    cells = rng.integers(0, gh * gw, size=(channels, k))
    found: dict[int, np.ndarray] = {}
    scores = []
    for imgs, pos in zip(images, cells):
        parts = []
        for i, p in zip(imgs, pos):
            if int(i) not in found:
                found[int(i)] = cell_parts(dataset, transform, int(i), grid)
            parts.append(int(found[int(i)][divmod(int(p), gw)]))
        real = [p for p in parts if p >= 0]
        scores.append(max(real.count(p) for p in set(real)) / k if real else 0.0)
    return float(np.mean(scores))


class _Scored(NamedTuple):
    purity: float
    pointing_game: float
    pointing_game_chance: float
    top1: float
    used: int  # channels with a weight above WEIGHT_THRESHOLD
    grid: tuple[int, int]


def _scores(run: Run, head: InfoDisentHead, ds, test, k: int) -> _Scored:
    """Purity, pointing game and top-1 of ``head`` on the run's backbone, its prototypes mined on ``test``."""
    head.eval()
    model = InfoDisent(run.model.backbone, head, list(run.class_names))
    index = mine_prototypes(model, ds, None, k=k, features=test, device=run.device, progress=False)
    W = model.W.double().cpu().numpy()
    bias = None if model.bias is None else model.bias.double().cpu().numpy()
    used = np.flatnonzero(W.max(0) > WEIGHT_THRESHOLD)
    pur = parts_purity(index, ds, model.transform, channels=used)
    pg = pointing_game(index, ds, model.transform, W, bias)
    top1 = float((pg["predicted"] == pg["label"]).mean())  # the pointing game's rows: every valid image
    return _Scored(float(pur["purity"].mean()), float(pg["hit"].mean()), float(pg["chance"].mean()), top1, len(used),
                   index.grid)


def label_randomisation(run: Run, split: str = "test", *, seed: int = 0, k: int = 10,
                        untrained_seeds: int = 3) -> LabelRandomisation:
    """The label randomisation check (needs the synthetic ``parts`` dataset, whose masks score purity and the
    pointing game, and the run's training feature cache): a head trained as the run's was (its FitConfig; a
    compact run's head pruned to the same K), on the training images with their labels shuffled.

    Two references beside it: chance (random patches; a random point), and the same head untrained (U the
    identity, so its channels are the backbone's own, each class's K picked by its initial weights; the mean
    over ``untrained_seeds`` initialisations from the run's seed on): what a frozen backbone gives with no
    label at all. A head that learnt nothing from the labels scores near the untrained head, which lies well
    above chance when the backbone's channels already fire on objects.

    Args:
        run: the run checked (its dataset must be ``parts``, its training features cached).
        split: the split the heads' prototypes are mined and scored on. Default ``"test"``.
        seed: seeds the label shuffle and the chance references. Default 0.
        k: patches per channel for the mining and the purity. Default 10.
        untrained_seeds: how many untrained heads the untrained reference averages. Default 3."""

    if untrained_seeds < 1:
        raise InputError(f"untrained_seeds must be at least 1, got {untrained_seeds}")
    ds = run.dataset(split)
    if not hasattr(ds, "masks"):
        raise InputError(f"the label randomisation check scores part purity and the pointing game, which need the "
                         f"parts dataset's masks; {ds.name} has none")
    train, test = run.features("train"), run.features(split)
    rng = np.random.default_rng(seed)
    shuffled = replace(train, labels=rng.permutation(train.labels))
    fit_cfg = run.config.run.fit if run.config.run is not None else None
    if fit_cfg is None:
        raise InputError(f"{run.path} does not record how it was trained: the check trains the same way")
    head_cfg = replace(run.model.head.config, pruned=False)
    kept = run.model.channels_per_class
    plain = CachedSource(shuffled, 256, fit_cfg.seed, run.device, view=0)
    untrained = []
    for i in range(untrained_seeds):
        torch.manual_seed(fit_cfg.seed + i)
        h = InfoDisentHead(head_cfg).to(run.device)
        untrained.append(prune_head(h, plain, kept) if kept is not None else h)  # W v at W's start: no label
    torch.manual_seed(fit_cfg.seed)
    head = InfoDisentHead(head_cfg).to(run.device)
    source = CachedSource(shuffled, run.config.run.batch_size, fit_cfg.seed, run.device)
    fit(head, source, None, fit_cfg, progress=False, device=run.device)
    if kept is not None:
        opts = SparseOptions(channels_per_class=kept, finetune_epochs=(run.config.run.sparse or SparseOptions()).finetune_epochs)
        head = sparsify(head, opts, fit_cfg, source, plain, progress=False, device=run.device).head
    shown = _scores(run, head, ds, test, k)
    before = [_scores(run, h, ds, test, k) for h in untrained]
    ex = run.metrics.explanations
    parts = ex.parts if ex is not None and ex.split == split else None
    return LabelRandomisation(
        top1=shown.top1, purity=shown.purity, purity_trained=parts.purity if parts else None,
        purity_chance=purity_chance(ds, run.model.transform, shown.grid, max(shown.used, 1), k, seed),
        pointing_game=shown.pointing_game, pointing_game_trained=parts.pointing_game if parts else None,
        pointing_game_chance=shown.pointing_game_chance, purity_untrained=float(np.mean([b.purity for b in before])),
        pointing_game_untrained=float(np.mean([b.pointing_game for b in before])))


def sanity_checks(run: Run, split: str = "test", *, images: int = 32, channels: int = 3, cascade: int = 3,
                  labels: bool = True, seed: int = 0, record: bool = False) -> SanityChecks:
    """Both checks (the label check where the dataset has part masks); see the module docstring.

    Args:
        run: the run whose explanations are checked (on its own dataset).
        split: the split whose images the model randomisation compares. Default ``"test"``.
        images: how many of its images. Default 32.
        channels: top channels per image whose maps are compared. Default 3.
        cascade: backbone stages re-initialised, one more per level. Default 3.
        labels: also run the label randomisation (it trains a head). Default True.
        seed: seeds the randomisation and the shuffle. Default 0.
        record: write the result where ``infodisent evaluate --sanity`` does: ``metrics.json["sanity"]`` (the
            test split of the head shown) and the split's evaluation file, if there is one. Default False."""
    if record and not run.shown:
        raise InputError("the sanity checks are recorded for the head shown: check them there, "
                         "or `infodisent select` this head first")
    levels, n = model_randomisation(run, split, images=images, channels=channels, cascade=cascade, seed=seed)
    shuffled = label_randomisation(run, split, seed=seed) if labels and hasattr(run.dataset(split), "masks") else None
    checks = SanityChecks(split=split, images=n, channels=channels, model=levels, labels=shuffled)
    if record and distributed.current().main:
        _record(run, split, checks)
    return checks


def _record(run: Run, split: str, checks: SanityChecks) -> None:
    if split == "test" and run.files.metrics.is_file():
        run.update_metrics(sanity=checks)
    path = run.head_files.evaluation(run.dataset_spec(split).name, split)
    if path.is_file():
        evaluation = from_dict(Evaluation, read_json(path))
        atomic_write_json(path, to_dict(replace(evaluation, sanity=checks)))


__all__ = ["backbone_stages", "label_randomisation", "model_randomisation", "purity_chance", "randomise",
           "sanity_checks"]
