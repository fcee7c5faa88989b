
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from infodisent.core.head import InfoDisentHead
from infodisent.data.datasets import PartsDataset
from infodisent.data.extract import extract_features
from infodisent.data.sources import CachedSource, StreamingSource
from infodisent.records.data import PartsConfig
from infodisent.records.model import HeadConfig
from infodisent.records.options import FitConfig
from infodisent.train.checkpoints import CheckpointPaths
from infodisent.train.probe import fit_linear_probe, probe_accuracy
from infodisent.train.training import evaluate, fit, loss_fn, lr_factor


def paths(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return CheckpointPaths(folder / "checkpoint.pt", folder / "history.csv")

SMALL = PartsConfig(image_size=64, train_per_class=4, test_per_class=2, scale=(0.3, 0.5))


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("cache")
    return {s: extract_features(tiny_backbone, PartsDataset(s, config=SMALL), root, progress=False) for s in ("train", "test")}


def _head(caches, **kw):
    torch.manual_seed(0)  # W's initialisation, as train_run seeds it
    return InfoDisentHead(HeadConfig(caches["train"].shape[0], 15, **kw))


def test_fit_learns_and_writes_history(caches):
    head = _head(caches)
    cfg = FitConfig(epochs=8, lr=1e-2, rotation_lr=1e-2)
    before = evaluate(head, CachedSource(caches["train"], 16)).loss
    U0 = head.U.detach().clone()
    hist = fit(head, CachedSource(caches["train"], 16), CachedSource(caches["test"], 64), cfg, progress=False)
    assert list(hist["epoch"]) == list(range(1, 9))
    assert {"train_loss", "train_top1", "seconds", "test_loss", "test_top1", "lr"} <= set(hist.columns)
    assert hist["train_loss"].iloc[-1] < before
    U = head.U.detach()
    assert (U - U0).abs().max() > 1e-3  # the rotation trained too, and stayed a rotation
    torch.testing.assert_close(U @ U.T, torch.eye(len(U)), rtol=0, atol=1e-5)
    assert hist["test_top1"].iloc[-1] == evaluate(head, CachedSource(caches["test"], 64)).top1  # the last row is the head


def test_cpu_training_is_deterministic_for_a_seed(caches):
    runs = []
    for _ in range(2):
        head = _head(caches, relaxation="gumbel")
        fit(head, CachedSource(caches["train"], 16, seed=3), None, FitConfig(epochs=2, seed=3), progress=False)
        runs.append(head.U.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_resume_after_a_kill_equals_an_uninterrupted_run(caches, tmp_path):
    cfg = FitConfig(epochs=4, seed=1)
    full = _head(caches, relaxation="gumbel")
    h_full = fit(full, CachedSource(caches["train"], 16, seed=1), None, cfg, paths(tmp_path / "full"), progress=False)


    class Stop(Exception):
        pass

    stopper = _head(caches, relaxation="gumbel")
    source = CachedSource(caches["train"], 16, seed=1)
    original = source.batches

    def batches(epoch):
        if epoch == 2:
            raise Stop
        return original(epoch)

    object.__setattr__(source, "batches", batches)
    with pytest.raises(Stop):
        fit(stopper, source, None, cfg, paths(tmp_path / "s"), progress=False)
    assert torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert len(pd.read_csv(tmp_path / "s" / "history.csv")) == 2
    resumed = _head(caches, relaxation="gumbel")
    h_res = fit(resumed, CachedSource(caches["train"], 16, seed=1), None, cfg, paths(tmp_path / "s"), resume=True, progress=False)
    torch.testing.assert_close(resumed.U, full.U, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.W, full.W, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_res["train_loss"], h_full["train_loss"], rtol=1e-6)


def test_streaming_source_matches_cached(caches, tiny_backbone):
    head = _head(caches)
    cached = evaluate(head, CachedSource(caches["test"], 64))
    ds = PartsDataset("test", config=SMALL)
    streamed = evaluate(head, StreamingSource(tiny_backbone, ds, 64))
    assert abs(cached.loss - streamed.loss) < 1e-2  # fp16 cache vs fp32 stream
    assert cached.top1 == streamed.top1
    assert ds.transform is None  # the source does not change its caller's dataset


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01


def test_linear_probe_recovers_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 20, generator=g) * 3 + 5
    w = torch.randn(4, 20, generator=g)
    y = (x @ w.T).argmax(1)
    res = fit_linear_probe(x[:400], y[:400], 4)
    assert probe_accuracy(res.linear, x[400:], y[400:]) > 0.9
    assert set(res.validation) and res.l2 in res.validation


def _blobs(n: int, seed: int, classes: int = 10, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes with a scale and offset per feature (what pooled features look like)."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 0.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    scale = torch.linspace(0.5, 4.0, dim)
    return (means[y] + torch.randn(n, dim, generator=g)) * scale + 3.0, y


def _reference_probe(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float) -> torch.nn.Linear:
    """The previous version's solver: float64 full-batch L-BFGS from zero, run to convergence."""
    mean, std = x.double().mean(0), x.double().std(0)
    z = (x.double() - mean) / std
    lin = torch.nn.Linear(x.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=1000, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(z), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    out = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        w = lin.weight / std
        out.weight.copy_(w.float())
        out.bias.copy_((lin.bias - (w * mean).sum(1)).float())
    return out


def test_both_probe_solvers_give_the_float64_lbfgs_answer_within_half_a_point(monkeypatch):
    from infodisent.train import probe

    x, y = _blobs(3000, 1)
    xt, yt = _blobs(8000, 2)
    ref = probe_accuracy(_reference_probe(x, y, 10, 1e-3), xt, yt)
    assert 0.5 < ref < 0.95  # a problem with room for solvers to differ
    for solver, data in (("lbfgs", x), ("minibatch", x), ("minibatch", x.half())):  # float16 rows are enough
        res = fit_linear_probe(data, y, 10, l2_grid=(1e-3,), solver=solver)
        assert res.solver == solver and abs(probe_accuracy(res.linear, xt, yt) - ref) <= 0.005, solver
    # the grid walked with warm starts: both solvers choose and reach the same accuracy
    lb = fit_linear_probe(x, y, 10)
    monkeypatch.setattr(probe, "IN_MEMORY", 1000)  # "auto" turns to minibatches beyond this many entries
    mb = fit_linear_probe(x, y, 10)
    assert (lb.solver, mb.solver) == ("lbfgs", "minibatch") and set(lb.validation) == set(mb.validation)
    assert abs(probe_accuracy(lb.linear, xt, yt) - probe_accuracy(mb.linear, xt, yt)) <= 0.005
    assert abs(probe_accuracy(lb.linear, xt, yt) - probe_accuracy(_reference_probe(x, y, 10, lb.l2), xt, yt)) <= 0.005
    with pytest.raises(ValueError, match="choose one of auto, lbfgs, minibatch"):
        fit_linear_probe(x, y, 10, solver="sgd")


def test_distillation_mixes_the_labels_loss_with_matching_the_teacher():
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits, teacher, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(loss_fn(logits, y, FitConfig(), teacher=teacher), ce)  # distill = 0: the teacher is ignored
    t = 2.0
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    mixed = loss_fn(logits, y, FitConfig(distill=0.25, distill_temperature=t), teacher=teacher)
    torch.testing.assert_close(mixed, 0.75 * ce + 0.25 * t * t * kl)
    # a student that already says what the teacher says has nothing left to learn from it
    assert float(loss_fn(teacher, y, FitConfig(distill=1.0), teacher=teacher)) == pytest.approx(0.0, abs=1e-6)
    sig = loss_fn(logits, y, FitConfig(loss="sigmoid", distill=1.0), teacher=teacher)
    torch.testing.assert_close(sig, F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher), reduction="sum") / 6)
    with pytest.raises(ValueError, match="distill"):
        FitConfig(distill=1.5)


def test_sigmoid_loss_is_one_vs_rest_bce():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([0, 2])
    manual = -(F.logsigmoid(torch.tensor([2.0, 1.0, -0.5])).sum() + F.logsigmoid(torch.tensor([0.0, -3.0, -2.0])).sum()) / 2
    torch.testing.assert_close(loss_fn(logits, y, FitConfig(loss="sigmoid")), manual)
    torch.testing.assert_close(loss_fn(logits, y, FitConfig()), F.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="loss='hinge'; choose one of softmax, sigmoid"):
        FitConfig(loss="hinge")  # refused where it is given, before any extraction
