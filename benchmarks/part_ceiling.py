"""What the backbone's 7x7 grid allows: supervised ceilings of the part metrics.

InfoDisent's U can turn the backbone's channels to any direction u, so the best part detector a
head could ever learn is the best *linear direction* of the backbone's cell features. This script
fits one direction per part (a balanced logistic regression on the training images' cells, with the
ground truth the metrics use) and scores it exactly as the metrics score a channel:

- ``parts``: "does this cell hold part p" (the dominant part, >= 20% coverage); scored by
  ``parts.purity``: the direction's top-k test images by their strongest cell, and the share of those
  cells showing its part.
- ``cub``: "is a visible keypoint of group g in the 72 px region around this cell"; scored on every
  test image where g is visible: how often the region around the direction's strongest cell holds g
  (``cub_parts.consistency`` calls a channel consistent at >= 0.8), and how often that set of groups
  survives Huang et al.'s noise (``cub_parts.stability``).

A direction trained with the answers is an upper bound for what an unsupervised channel of this grid
reaches; the gap to a trained head is what training leaves, the gap to 1 what the grid and the
features leave.

    python benchmarks/part_ceiling.py runs/demo             # parts
    python benchmarks/part_ceiling.py runs/ablations_cub/compact --stability 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import infodisent
from infodisent.data.datasets import PartsDataset
from infodisent.eval.part_metrics import KeypointRegions, cell_parts, noisy_positions


def features(run, split: str) -> tuple[torch.Tensor, np.ndarray]:
    """Cell features (N, H*W, D) of a split's un-augmented view, and their dataset indices."""
    cache = run.cache(split)
    rows = cache.rows(view=0)
    x, _ = cache.load(rows)
    return x.flatten(2).transpose(1, 2).contiguous(), cache.indices[rows]


def fit_direction(feats: torch.Tensor, target: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """A unit direction u separating the target cells from all others (balanced logistic loss, L-BFGS)."""
    x = feats.reshape(-1, feats.shape[-1]).float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    y = target.reshape(-1).float()
    lin = torch.nn.Linear(x.shape[1], 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = (1 - y.mean()) / y.mean().clamp_min(1e-6)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(xs).squeeze(1), y, pos_weight=pos_weight) \
            + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    u = lin.weight.detach().squeeze(0) / sd
    return u / u.norm()


def parts_ceiling(run, k: int) -> None:
    transform = run.model.backbone.transform
    dominant = {}
    for split in ("train", "test"):
        feats, idx = features(run, split)
        ds = run.dataset(split)
        hw = feats.shape[1]
        h = w = int(round(hw ** 0.5))
        part = np.stack([cell_parts(ds, transform, int(i), (h, w)).reshape(-1) for i in idx])
        dominant[split] = (feats, torch.from_numpy(part), ds.part_names)
    tr_f, tr_p, names = dominant["train"]
    te_f, te_p, _ = dominant["test"]
    scores = []
    for p, name in enumerate(names):
        resp = te_f.float() @ fit_direction(tr_f, tr_p == p)
        best, where = resp.max(1)
        top = best.topk(k).indices
        got = te_p[top, where[top]]
        real = got[got >= 0]
        purity = float((real == real.mode().values).sum()) / k if len(real) else 0.0
        scores.append(purity)
        print(f"{name:>10}: purity {purity:.2f}")
    print(f"ceiling of parts.purity (a supervised direction per part type): {np.mean(scores):.3f}")


def cub_ceiling(run, stability_images: int) -> None:
    grid = run.index("test").grid if run.files.prototypes("test").is_dir() else (7, 7)
    out = {}
    for split in ("train", "test"):
        feats, idx = features(run, split)
        ds = run.dataset(split)
        regions = KeypointRegions(ds, run.model.backbone.transform, grid)
        hw = feats.shape[1]
        present = np.stack([np.stack([regions.present(int(i), p) for p in range(hw)]) for i in idx])  # (N, HW, G)
        visible = np.stack([regions.visible(int(i)) for i in idx])  # (N, G)
        out[split] = (feats, present, visible, idx, regions, ds)
    tr_f, tr_pres, _, _, regions, _ = out["train"]
    te_f, te_pres, te_vis, te_idx, te_regions, te_ds = out["test"]
    dirs, rates = [], []
    for g, name in enumerate(regions.groups):
        u = fit_direction(tr_f, torch.from_numpy(tr_pres[:, :, g]))
        dirs.append(u)
        where = (te_f.float() @ u).argmax(1).numpy()
        hit = te_pres[np.arange(len(where)), where, g]
        rate = float(hit[te_vis[:, g]].mean()) if te_vis[:, g].any() else float("nan")
        rates.append(rate)
        print(f"{name:>9}: its region holds it on {100 * rate:.0f}% of the test birds where it is visible")
    rates = np.array(rates)
    print(f"groups whose supervised direction is consistent (>= 80%): {(rates >= 0.8).sum()} of {len(rates)}; "
          f"mean rate {np.nanmean(rates):.3f}")
    if stability_images:
        rng = np.random.default_rng(0)
        subset = np.sort(rng.choice(len(te_idx), min(stability_images, len(te_idx)), replace=False))
        images = te_idx[subset]
        U, backbone = torch.stack(dirs), run.model.backbone
        # the directions' strongest cells, on the metric's clean and noisy images
        clean, noisy = noisy_positions(run.model, te_ds, images, positions=lambda x: torch.einsum(
            "gd,bdhw->bghw", U, backbone(x)).flatten(2).argmax(2))
        same = [np.array_equal(te_regions.present(int(i), int(c)), te_regions.present(int(i), int(nn)))
                for row, i in enumerate(images) for c, nn in zip(clean[row], noisy[row])]
        print(f"stability of the supervised directions under Huang et al.'s noise, {len(images)} test images: "
              f"{np.mean(same):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--k", type=int, default=10, help="top-k patches of parts.purity")
    ap.add_argument("--stability", type=int, default=0, help="CUB: test images for the stability ceiling")
    a = ap.parse_args()
    run = infodisent.open_run(a.run_dir)
    if isinstance(run.dataset("test"), PartsDataset):
        parts_ceiling(run, a.k)
    else:
        cub_ceiling(run, a.stability)


if __name__ == "__main__":
    main()
