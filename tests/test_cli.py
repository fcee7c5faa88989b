"""The `infodisent` command: its options reach the run configuration and the head; its refusals come first."""

import json
import shutil

import torch

import infodisent
from infodisent.cli import main
from infodisent.records.options import SparseOptions


def test_ablation_flags_reach_the_head(tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["train", "--backbone", "test_resnet", "--weights", "random", "--image-size", "64", "--max-classes", "3",
            "--epochs", "1", "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0", "--quiet"]
    assert main([*args, "--out", str(out), "--no-rotation", "--pooling", "avg", "--unconstrained", "--dense"]) == 0
    head = json.loads((out / "config.json").read_text())["head"]
    assert not head["pruned"] and json.loads((out / "config.json").read_text())["channels_per_class"] is None
    assert (head["rotation"], head["pooling"], head["nonnegative"]) == (False, "avg", False)
    model = infodisent.open_run(out).model
    torch.testing.assert_close(model.U, torch.eye(model.U.shape[0]))
    assert main([*args, "--out", str(tmp_path / "p"), "--prune-k", "0"]) == 2
    assert "channels_per_class >= 1" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "p"), "--prune-k", "2", "--dense"]) == 2
    assert "--dense and --prune-k exclude each other" in capsys.readouterr().err


def test_cli_pruning_options_reach_the_run_config():
    from infodisent.cli import _data_config, _run_config, build_parser

    def cfg(*extra):
        a = build_parser().parse_args(["train", "--out", "x", *extra])
        return _run_config(a, _data_config(a)).sparse

    assert cfg() == SparseOptions()  # the command line's defaults are the library's
    assert cfg("--no-escalate").escalate is False
    assert cfg("--refit-epochs", "0").refit_epochs == 0
    assert cfg("--loss-se", "2", "--prune-candidates", "4", "2").loss_se == 2.0
    assert cfg("--dense") is None


def test_sanity_on_another_dataset_is_refused_before_anything_is_evaluated(tiny_run, tmp_path, capsys):
    _, _, cfg = tiny_run
    shutil.copytree(cfg.out, tmp_path / "run")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    rc = main(["evaluate", str(tmp_path / "run"), "--sanity", "--dataset", "folder", "--root", str(tmp_path),
               "--quiet", "--num-workers", "0"])
    assert rc == 2 and "the sanity checks retrain on the run's own data" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before  # no evaluation file left behind
