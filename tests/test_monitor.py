"""The training monitor (infodisent.train.monitor): it hears every epoch and pruning round, and its
stop resumes to the same head."""

from dataclasses import replace

import pytest
import torch

import infodisent
from infodisent.train.monitor import Monitor, TrainingStopped


def test_a_monitor_hears_every_epoch_and_its_stop_resumes_to_the_same_head(tiny_run, tmp_path):
    cfg = replace(tiny_run[2], out=str(tmp_path / "full"), fit=replace(tiny_run[2].fit, epochs=4))
    seen = []
    full = infodisent.train_run(cfg, monitor=Monitor(on_progress=seen.append))
    stages = [p.stage for p in seen]
    assert stages[0] == "features train" and stages[-1] == "done"
    assert [p.done for p in seen if p.stage == "train"] == [1, 2, 3, 4]

    stopped = replace(cfg, out=str(tmp_path / "stopped"))
    rows = []
    m = Monitor(on_epoch=lambda row: (rows.append(row), row["epoch"] == 2 and m.request_stop()))
    with pytest.raises(TrainingStopped, match="after epoch 2 of 4"):
        infodisent.train_run(stopped, monitor=m)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["phase"] == "train"
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "stopped" / "config.json").exists()  # not a run yet
    resumed = infodisent.train_run(replace(stopped, resume=True))
    torch.testing.assert_close(resumed.model.W, full.model.W, rtol=0, atol=1e-6)
    assert resumed.metrics.infodisent.top1 == full.metrics.infodisent.top1


def test_a_monitor_hears_pruning_rounds_by_phase(tiny_run, tmp_path):
    sparse = infodisent.SparseOptions(channels_per_class=3, round_epochs=1, finetune_epochs=1)
    cfg = replace(tiny_run[2], out=str(tmp_path / "pruned"), sparse=sparse, fit=replace(tiny_run[2].fit, epochs=2))
    m = Monitor()
    result = infodisent.train_run(cfg, monitor=m)
    phases = [r["phase"] for r in m.rows]
    assert phases[:2] == ["train", "train"] and phases[-1] == "prune K=3"
    assert [r["epoch"] for r in m.rows] == list(range(1, len(result.history) + 1))

    # a stop asked for in the last dense epoch ends before any pruning, resumable
    late = replace(cfg, out=str(tmp_path / "late"))
    m = Monitor(on_epoch=lambda row: row["epoch"] == 2 and m.request_stop())
    with pytest.raises(TrainingStopped, match="before pruning"):
        infodisent.train_run(late, monitor=m)
    assert [r["phase"] for r in m.rows] == ["train", "train"]
    resumed = infodisent.train_run(replace(late, resume=True))
    torch.testing.assert_close(resumed.model.W, result.model.W, rtol=0, atol=1e-6)
