"""The accuracy-readability frontier: every head a compact run keeps, ``Run.with_k`` and ``infodisent select``."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import infodisent
from infodisent.cli import main
from infodisent.errors import InputError
from infodisent.pipeline import evaluate_run, train_run
from infodisent.records.data import PartsConfig
from infodisent.records.options import FitConfig, SparseOptions
from infodisent.records.results import frontier_table
from infodisent.records.run import RunConfig
from infodisent.records.serialize import to_dict
from infodisent.train.sparse import finetune_rates, lost_evidence, removed_evidence

SMALL = PartsConfig(image_size=64, train_per_class=4, test_per_class=2, scale=(0.3, 0.5))


@pytest.fixture(scope="module")
def chosen_run(tmp_path_factory):
    """A run whose K was chosen among three candidates (5 classes, test_resnet at 64 px)."""
    tmp = tmp_path_factory.mktemp("frontier")
    cfg = RunConfig(out=str(tmp / "run"), backbone="test_resnet", weights="random", image_size=64, parts=SMALL,
                    max_classes=5, cache_dir=str(tmp / "cache"), num_workers=0, progress=False,
                    fit=FitConfig(epochs=3),
                    sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2, 4), validation=0.25,
                                         refit_epochs=2))
    return train_run(cfg), cfg


def test_evidence_lost_and_the_fine_tune_rates():
    imp = torch.tensor([[3.0, 1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # class 0 loses 1 of its 4 positive units, class 2 half; class 1 had no evidence and does not count
    assert removed_evidence(imp, mask) == pytest.approx((0.25 + 0.5) / 2)
    assert removed_evidence(imp, torch.ones_like(mask)) == 0.0
    imp[0, 1] = float("-inf")  # a channel an earlier round removed counts as nothing
    assert removed_evidence(imp, mask) == pytest.approx((0.0 + 0.5) / 2)
    # rounds compound: a head that lost half, then half of what was left, has lost three quarters
    assert lost_evidence(0.0, 0.5) == 0.5 and lost_evidence(0.5, 0.5) == 0.75 and lost_evidence(0.3, 0.0) == pytest.approx(0.3)
    fit = FitConfig(lr=2e-3, rotation_lr=1e-3)
    assert finetune_rates(SparseOptions(), fit, 0.0) == pytest.approx((2e-4, 1e-4))  # the floor: a tenth
    assert finetune_rates(SparseOptions(), fit, 0.5) == pytest.approx((1e-3, 5e-4))
    assert finetune_rates(SparseOptions(), fit, 1.0) == pytest.approx((2e-3, 1e-3))
    assert finetune_rates(SparseOptions(finetune_lr_min=0.3), fit, 0.1) == pytest.approx((6e-4, 3e-4))
    assert finetune_rates(SparseOptions(finetune_lr=5e-3), fit, 0.0) == (5e-3, 1e-3)  # given: used as it is
    with pytest.raises(InputError, match="finetune_lr_min"):
        SparseOptions(finetune_lr_min=0)


def test_every_candidate_is_refit_kept_and_scored(chosen_run):
    result, cfg = chosen_run
    m = result.metrics
    k = m.sparse.channels_per_class
    keys = [p.key for p in m.frontier]
    # the dense reference, then every head fine-tuned as a final one from the largest K: the frontier's 16 and
    # the candidates
    assert keys == ["dense", "16", "4", "2", "1"]
    assert [p.key for p in m.frontier if p.shown] == [str(k)]
    shown = m.point(k)
    assert shown.test == m.infodisent  # the head in head.safetensors is the shown point
    assert m.point("dense").test.top1 == pytest.approx(m.sparse.dense.top1)
    sel = m.sparse.selection
    assert "16" not in sel.top1  # scored on the held-out images, never the rule's choice
    hist = result.history
    held = hist.dropna(subset=["validation_top1"]).groupby("channels_per_class").last()
    for p in m.frontier[1:]:
        assert p.validation_top1 == pytest.approx(held.loc[p.channels_per_class, "validation_top1"])
        assert p.validation_loss == pytest.approx(held.loc[p.channels_per_class, "validation_loss"])
        if p.key in sel.top1:
            assert p.validation_top1 == pytest.approx(sel.top1[p.key])
        assert p.weights_per_class <= p.channels_per_class and p.global_size <= 5 * p.channels_per_class
        assert 0 <= p.local_size <= p.channels_per_class
        W = load_file(str(result.run_dir / "heads" / p.key / "head.safetensors"))["W"]
        assert int((W > 1e-3).sum(1).max()) <= p.channels_per_class
    assert torch.equal(load_file(str(result.run_dir / "heads" / str(k) / "head.safetensors"))["W"],
                       load_file(str(result.run_dir / "head.safetensors"))["W"])
    assert m.point("dense").validation_top1 == pytest.approx(sel.dense_top1)
    refit = hist[hist["phase"] == "refit candidate"]
    assert sorted(set(refit["channels_per_class"])) == sorted(a for a in (1, 2, 4, 16) if a != k)
    assert len(refit) == 3 * 2  # three other heads, refit_epochs each
    on_disk = json.loads((result.run_dir / "metrics.json").read_text())
    assert len(on_disk["frontier"]) == 5 and {"test", "local_size", "global_size"} <= set(on_disk["frontier"][0])
    table = frontier_table(m.frontier)
    assert list(table.index) == ["dense", "16", "4", "2", "1"] and table.loc[str(k), "shown"]
    resumed = train_run(cfg.__class__(**{**cfg.__dict__, "resume": True}))  # finished: the frontier is read back
    assert resumed.metrics.frontier == m.frontier


def test_with_k_gives_another_kept_head_without_touching_the_run(chosen_run):
    result, _ = chosen_run
    run = infodisent.open_run(result.run_dir)
    k = run.channels_per_class
    other = next(a for a in (1, 2, 4) if a != k)
    before = run.head_sha256()
    h = run.with_k(other)
    assert h.model.channels_per_class == other and h.channels_per_class == other
    assert h.model.backbone is run.model.backbone  # the backbone is shared
    assert h.metrics.infodisent == run.metrics.point(other).test and h.metrics.agreement is None
    e = h.explain(0)
    assert e.logits.shape[-1] == 5
    assert run.with_k(other) is h and run.with_k(k) is run and h.with_k(k) is run
    dense = run.with_k("dense")
    assert dense.model.channels_per_class is None and run.with_k(None) is dense
    assert run.head_sha256() == before  # nothing on disk changed
    with pytest.raises(InputError, match="no kept head with K=3; the run keeps dense, 16, 4, 2, 1"):
        run.with_k(3)
    # a kept head mines its own index, in its own folder
    index = h.mine("test", k=2, progress=False, batch_size=8)
    assert index.path == result.run_dir / "heads" / str(other) / "prototypes" / "test"
    assert not run.has_index("test") and h.has_index("test")


def test_select_shows_another_head_and_is_reversible(chosen_run, capsys):
    result, _ = chosen_run
    run = infodisent.open_run(result.run_dir)
    k = run.channels_per_class
    other = next(a for a in (1, 2, 4) if a != k)
    ev = evaluate_run(run, "test", explanations=True, k=2, batch_size=8, progress=False, stability=False)
    m = infodisent.open_run(result.run_dir).metrics
    assert all(p.explanations is not None for p in m.frontier)  # every kept head scored
    assert to_dict(m.point(k).explanations) == to_dict(m.explanations) == to_dict(ev.explanations)
    assert m.point(other).purity is not None and m.point(other).purity == m.point(other).explanations.parts.purity
    shown_eval = sorted(p.name for p in result.run_dir.glob("evaluation_*.json"))
    assert shown_eval and (result.run_dir / "prototypes" / "test").is_dir()

    assert main(["select", str(result.run_dir), "--k", str(other)]) == 0
    out = capsys.readouterr().out
    assert f"now shows K={other}" in out and f"training chose K={k}" in out and "--chosen" in out
    now = infodisent.open_run(result.run_dir)
    assert now.channels_per_class == other == now.model.channels_per_class
    assert now.metrics.selected.channels_per_class == other and now.metrics.selected.chosen == k
    assert now.metrics.infodisent == now.metrics.point(other).test
    assert to_dict(now.metrics.explanations) == to_dict(now.metrics.point(other).explanations)
    assert [p.key for p in now.metrics.frontier if p.shown] == [str(other)]
    assert json.loads((result.run_dir / "config.json").read_text())["channels_per_class"] == other
    # what belonged to the head shown moved with it, and the new head's own index came back
    assert sorted(p.name for p in (result.run_dir / "heads" / str(k)).glob("evaluation_*.json")) == shown_eval
    assert (result.run_dir / "heads" / str(k) / "prototypes" / "test").is_dir()
    assert now.has_index("test") and now.index("test") is not None  # fresh against the new head
    assert not list(result.run_dir.glob("evaluation_*.json"))

    assert main(["select", str(result.run_dir), "--k", "3"]) == 2
    assert "no kept head with K=3" in capsys.readouterr().err
    assert main(["select", str(result.run_dir), "--chosen"]) == 0
    back = infodisent.open_run(result.run_dir)
    assert back.channels_per_class == k and back.metrics.selected is None
    assert back.metrics.infodisent == back.metrics.point(k).test and back.has_index("test")
    assert main(["select", str(result.run_dir)]) == 0  # no --k: the frontier alone
    assert "shown" in capsys.readouterr().out


def test_report_draws_the_frontier(chosen_run):
    from infodisent.viz.plots import frontier_figure
    from infodisent.viz.report import write_report
    from infodisent.viz.sentences import frontier_steps

    result, _ = chosen_run
    run = infodisent.open_run(result.run_dir)
    m = run.metrics
    pts = {p.key: p for p in m.frontier}
    steps = frontier_steps(m.frontier)
    lost = 100 * (pts["4"].test.top1 - pts["2"].test.top1)
    assert steps.startswith("Each step down in K: K=16→4 ") and "; K=4→2 " in steps
    assert f"{abs(lost):.1f} points of top-1" in steps
    assert f"{pts['4'].local_size - pts['2'].local_size:.1f} fewer channels per decision" in steps
    fig = frontier_figure(m.frontier, m.linear_probe, m.sparse.channels_per_class)
    names = [t.name for t in fig.data]
    assert names[:3] == ["compact heads", "dense head", "linear probe"] and "the rule's K" in names
    assert list(fig.data[0].x) == [1, 2, 4, 16] and "purity" in names  # scored by the evaluation above
    peer = frontier_figure(m.frontier, peers={"a peer": [(4.0, 0.3), (1.5, 0.1)]})
    drawn = next(t for t in peer.data if t.name == "a peer")  # beside the compact heads, in K's order
    assert list(drawn.x) == [1.5, 4.0] and list(drawn.y) == [0.1, 0.3] and drawn.xaxis == "x"
    html = write_report(run, samples=0, max_classes=1, channels=1, prototypes=1, progress=False).read_text()
    assert "every head the run keeps" in html and "Each step down in K" in html and "infodisent select" in html


def test_the_widgets_switch_heads_without_a_restart(chosen_run):
    from infodisent.widgets import ChannelBrowser, DecisionExplorer

    result, _ = chosen_run
    run = infodisent.open_run(result.run_dir)
    k = run.channels_per_class
    other = next(a for a in (1, 2, 4) if a != k)
    b = ChannelBrowser(run)
    assert b.k.layout.display is None and [v for _, v in b.k.options] == ["dense", "16", "4", "2", "1"]
    assert b.k.value == str(k) and f"K={k}" in b.k.label and "(shown)" in b.k.label
    b.k.value = str(other)  # no index for that head yet: mined now, and said
    assert b.run.channels_per_class == other == b.model.channels_per_class, b.messages.last
    assert "mined now, the first time it is browsed" in b.messages.last
    assert (result.run_dir / "heads" / str(other) / "prototypes" / "train" / "meta.json").is_file()
    assert b.index is not None and b.index.path.parent.parent.name == str(other)
    assert set(b.used_channels) == set(np.flatnonzero(b.model.W.detach().numpy().max(0) > 1e-3))
    b.k.value = str(k)
    assert b.run is run and "showing the head with K=" in b.messages.last

    e = DecisionExplorer(run, 1)
    before = e.expl.logits.copy()
    e.k.value = "dense"
    assert e.run.channels_per_class is None and e.expl.sources[0] == 1
    assert not np.allclose(e.expl.logits, before)  # the dense head's decision
    assert "no train prototype index yet" in e.messages.last
    e.k.value = str(other)
    assert e.model.channels_per_class == other and e.messages.last == ""  # mined above by the browser
