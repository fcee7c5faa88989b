"""The pipeline, run directories and the CLI, end to end on a tiny backbone."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import infodisent
from infodisent.cli import main
from infodisent.datasets import PartsConfig, PartsDataset
from infodisent.head import two_sided_max
from infodisent.model import RunMismatchError
from infodisent.runs import RunConfig, RunExistsError, evaluate_run, train_run
from infodisent.training import FitConfig

SMALL = PartsConfig(image_size=64, train_per_class=4, test_per_class=2, scale=(0.3, 0.5))


def tiny_cfg(tmp_path, **kw):
    base = dict(
        out=str(tmp_path / "run"), backbone="test_resnet", weights="random", image_size=64, parts=SMALL,
        cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False, fit=FitConfig(epochs=3),
    )
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    return train_run(tiny_cfg(tmp)), tmp


def test_run_directory_contents(run):
    result, _ = run
    d = result.run_dir
    for f in ("config.json", "head.safetensors", "metrics.json", "history.csv", "probe.safetensors"):
        assert (d / f).is_file(), f
    m = json.loads((d / "metrics.json").read_text())
    assert set(m["accuracy"]) == {"infodisent", "linear_probe"}
    assert 0 <= m["accuracy"]["infodisent"] <= 1 and 0 <= m["accuracy"]["linear_probe"] <= 1
    assert m["dataset"] == "parts" and m["backbone"] == "test_resnet"
    assert m["num_classes"] == 15 and m["num_test_images"] == 30 and m["num_skipped_images"] == 0
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["backbone"]["name"] == "test_resnet" and cfg["backbone"]["weights"]["kind"] == "random"
    assert cfg["data"]["input_size"] == [3, 64, 64] and len(cfg["class_names"]) == 15
    assert cfg["head"]["orthogonal_map"] == "cayley"
    assert len(pd.read_csv(d / "history.csv")) == 3


def test_saved_run_invariants(run):
    """Orthogonality of U, W >= 0, two-sided pooling and exact contributions, read back from disk."""
    result, _ = run
    tensors = load_file(str(result.run_dir / "head.safetensors"))
    U, W = tensors["U"], tensors["W"]
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[0]), atol=1e-4, rtol=0)
    assert (W >= 0).all()
    model = infodisent.load(result.run_dir)
    torch.testing.assert_close(model.U, U)
    ds = PartsDataset("test", model.transform, config=SMALL)
    x = torch.stack([ds[i][0] for i in range(6)])
    out = model.outputs(x)
    torch.testing.assert_close(out.J, torch.einsum("ed,bdhw->behw", U, out.features), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.v, two_sided_max(out.J).values)
    contrib = out.contributions(model.head)
    assert torch.allclose(contrib.sum(-1), out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(x), out.logits)


def test_evaluate_matches_training_metrics(run):
    result, tmp = run
    ev = evaluate_run(result.run_dir, cache_dir=str(tmp / "cache"), progress=False, num_workers=0)
    assert ev["accuracy"]["infodisent"] == pytest.approx(result.metrics["accuracy"]["infodisent"])
    assert ev["accuracy"]["linear_probe"] == pytest.approx(result.metrics["accuracy"]["linear_probe"])
    assert (result.run_dir / "evaluation_parts_test.json").is_file()


def test_existing_run_needs_resume_or_overwrite(run, tmp_path):
    result, tmp = run
    with pytest.raises(RunExistsError, match="--resume"):
        train_run(tiny_cfg(tmp))


def test_resume_into_another_backbone_names_both(run):
    result, tmp = run
    with pytest.raises(RunMismatchError, match="test_resnet.*test_efficientnet|test_efficientnet.*test_resnet"):
        train_run(tiny_cfg(tmp, backbone="test_efficientnet", resume=True))
    with pytest.raises(RunMismatchError, match="15 classes.*5 classes"):
        train_run(tiny_cfg(tmp, resume=True, max_classes=5))


def test_head_for_another_backbone_is_refused(run, tmp_path):
    result, _ = run
    cfg = json.loads((result.run_dir / "config.json").read_text())
    cfg["backbone"]["name"], cfg["backbone"]["num_features"] = "test_efficientnet", 256
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    (bad / "head.safetensors").write_bytes((result.run_dir / "head.safetensors").read_bytes())
    cfg["head"]["num_features"] = 256
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunMismatchError, match="head.safetensors"):
        infodisent.load(bad)


def test_cli_train_evaluate_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INFODISENT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    from conftest import write_image

    for split in ("train", "test"):
        for c in ("a", "b"):
            for k in range(4):
                write_image(root / split / c / f"{k}.png", k + (c == "b") * 10, size=(64, 64))
    out = tmp_path / "cli_run"
    args = ["train", "--dataset", "folder", "--root", str(root), "--backbone", "test_resnet", "--weights", "random",
            "--image-size", "64", "--epochs", "2", "--out", str(out), "--quiet", "--num-workers", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "InfoDisent" in text and "linear probe" in text and "ratio" in text
    assert main(args + ["--resume"]) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--quiet", "--num-workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 8
    assert main(["train", "--dataset", "cub", "--root", str(tmp_path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "images.txt" in capsys.readouterr().err
    assert main(["train", "--backbone", "resnet5O", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "resnet50" in capsys.readouterr().err
