"""The pipeline, run directories and the CLI, end to end on a tiny backbone."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import SMALL_PARTS, tiny_config
from safetensors.torch import load_file

import infodisent
from infodisent.cli import main
from infodisent.core.head import two_sided_max
from infodisent.core.model import RunMismatchError
from infodisent.data.datasets import PartsDataset
from infodisent.data.sources import CachedSource
from infodisent.pipeline import RunExistsError, evaluate_run, pooled_features, train_run
from infodisent.records.options import FitConfig
from infodisent.records.run import RunConfig
from infodisent.train.checkpoints import CheckpointMismatchError
from infodisent.train.training import classification_metrics


def tiny_cfg(tmp_path, **kw):
    """A dense run on 15 classes (the pipeline's mechanics; the compact default is tested in
    test_pipeline_pruning)."""
    return tiny_config(tmp_path, **{"max_classes": None, "sparse": None, **kw})


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
    assert set(m["infodisent"]) == set(m["linear_probe"]) == {"top1", "top5", "loss"}  # one vocabulary
    assert m["probe"]["solver"] == "lbfgs" and m["probe"]["l2"] in [float(k) for k in m["probe"]["holdout_accuracy"]]
    assert m["dataset"] == "parts" and m["backbone"] == "test_resnet"
    assert m["num_classes"] == 15 and m["num_test_images"] == 30 and m["skipped_images"] == {"train": [], "test": []}
    hist = pd.read_csv(d / "history.csv")
    assert m["infodisent"]["top1"] == pytest.approx(hist["test_top1"].iloc[-1])
    umask = os.umask(0o022)
    os.umask(umask)
    for f in ("config.json", "head.safetensors", "metrics.json"):  # atomic writes keep ordinary permissions
        assert (d / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["backbone"]["name"] == "test_resnet" and cfg["backbone"]["weights"]["kind"] == "random"
    assert cfg["data"]["input_size"] == [3, 64, 64] and len(cfg["class_names"]) == 15
    assert cfg["head"]["orthogonal_map"] == "cayley" and cfg["version"] == 2
    assert len(hist) == 3


def test_saved_run_invariants(run):
    """Orthogonality of U, W >= 0, two-sided pooling and exact contributions, read back from disk."""
    result, _ = run
    tensors = load_file(str(result.run_dir / "head.safetensors"))
    U, W = tensors["U"], tensors["W"]
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[0]), atol=1e-4, rtol=0)
    assert (W >= 0).all()
    model = infodisent.open_run(result.run_dir).model
    torch.testing.assert_close(model.U, U)
    ds = PartsDataset("test", model.transform, config=SMALL_PARTS)
    x = torch.stack([ds[i][0] for i in range(6)])
    out = model.outputs(x)
    torch.testing.assert_close(out.J, torch.einsum("ed,bdhw->behw", U, out.features), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.v, two_sided_max(out.J).values)
    contrib = out.contributions(model.head)
    assert torch.allclose(contrib.sum(-1), out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(x), out.logits)


def test_evaluate_matches_training_metrics(run):
    result, tmp = run
    ev = evaluate_run(result.run_dir, progress=False, num_workers=0)
    assert ev.infodisent == result.metrics.infodisent
    assert ev.linear_probe.top1 == pytest.approx(result.metrics.linear_probe.top1)
    saved = json.loads((result.run_dir / "evaluation_parts_test.json").read_text())
    assert infodisent.Evaluation.from_dict(saved) == ev
    assert json.loads((result.run_dir / "metrics.json").read_text()) == result.metrics.to_dict()  # left alone


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
        infodisent.open_run(bad).model


def test_cli_train_evaluate_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INFODISENT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    from helpers import write_image

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


# ----------------------------------------------------------------------------- the Run handle


def test_the_saved_probe_scores_what_metrics_json_says(run):
    """The linear probe in probe.safetensors, run on the test maps' pooled features, gives metrics.json's
    linear_probe accuracy, and the ratio puts the head's top-1 over it."""
    result, _ = run
    r = infodisent.open_run(result.run_dir)
    x, y = pooled_features(CachedSource(r.cache("test"), 64, view=0))
    with torch.no_grad():
        probe = classification_metrics(r.probe(x), y)
    assert probe.top1 == pytest.approx(r.metrics.linear_probe.top1, abs=1e-9) and 0 < probe.top1 <= 1
    assert r.metrics.ratio * probe.top1 == pytest.approx(r.metrics.infodisent.top1)


def test_run_handle_loads_once_and_keeps(run):
    result, _ = run
    r = infodisent.open_run(result.run_dir)
    assert r.metrics == result.metrics and r.metrics is r.metrics
    assert r.config.model.num_classes == 15 and r.config.run.fit.epochs == 3
    assert r.model is r.model and r.dataset("test") is r.dataset("test")
    assert r.cache("test") is not None and r.cache("test").path == r.cache("test").path
    pd.testing.assert_frame_equal(r.history, pd.read_csv(result.run_dir / "history.csv"))
    assert repr(r).startswith("Run(") and "15 classes" in repr(r)


def test_run_handle_says_what_is_missing_or_unknown(run):
    result, _ = run
    r = infodisent.open_run(result.run_dir)
    with pytest.raises(FileNotFoundError, match="infodisent mine"):
        r.index("train")
    with pytest.raises(ValueError, match="unknown split"):
        r.dataset("validation")
    with pytest.raises(ValueError, match="outside the test split"):
        r.explain(30)


def test_run_explains_test_images_by_index_as_the_image_path_does(run):
    result, _ = run
    r = infodisent.open_run(result.run_dir)
    e = r.explain(3)
    assert e.sources == (3,) and e.view.size == (64, 64) and e.label == int(r.dataset("test").labels[3])
    direct = infodisent.explain(r.model, r.dataset("test").load_image(3))
    assert (e.logits == direct.logits).all()  # the view path and the image path agree


def test_run_predictions_agree_with_the_metrics_and_the_explanations(run):
    result, _ = run
    r = infodisent.open_run(result.run_dir)
    preds = r.predictions("test")  # no test index: from the feature cache through the head
    assert list(preds["image"]) == list(range(30)) and list(preds["label"]) == list(r.dataset("test").labels)
    assert preds["correct"].mean() == pytest.approx(result.metrics.infodisent.top1)
    e = r.explain(3)
    assert preds.loc[3, "predicted"] == e.predicted and preds.loc[3, "correct"] == bool(e.correct[0])
    assert (preds["logit_margin"] >= 0).all() and preds["probability"].between(1 / 15, 1).all()


def test_update_metrics_keeps_what_others_wrote(run, tmp_path):
    result, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    r = infodisent.open_run(copy)
    extra = infodisent.Accuracy(0.5, 0.75)
    r.update_metrics(linear_probe=extra)
    again = infodisent.open_run(copy).metrics
    assert again.linear_probe == extra and again.infodisent == result.metrics.infodisent
    assert again.feature_cache == result.metrics.feature_cache


def test_bad_run_files_are_named(run, tmp_path):
    result, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(result.run_dir, bad)
    text = (bad / "config.json").read_text()
    (bad / "config.json").write_text(text[: len(text) // 2])  # cut short
    with pytest.raises(infodisent.CorruptFileError, match="config.json"):
        infodisent.open_run(bad)
    cfg = json.loads(text)
    for version, word in ((1, "older"), (99, "newer")):
        (bad / "config.json").write_text(json.dumps({**cfg, "version": version}))
        with pytest.raises(infodisent.ConfigVersionError, match=f"version {version}.*{word}"):
            infodisent.open_run(bad)
    (bad / "config.json").write_text(text)
    head = (bad / "head.safetensors").read_bytes()
    for damaged in (b"", head[:100], head[: len(head) // 2]):
        (bad / "head.safetensors").write_bytes(damaged)
        with pytest.raises(infodisent.CorruptFileError, match="head.safetensors"):
            infodisent.open_run(bad).model
    (bad / "head.safetensors").write_bytes(head)
    cfg["class_names"], cfg["num_classes"], cfg["head"]["num_classes"] = cfg["class_names"][:2], 2, 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunMismatchError, match="15 classes.*2 classes"):
        infodisent.open_run(bad).model
    with pytest.raises(infodisent.NotARunError, match="not an InfoDisent run directory"):
        infodisent.open_run(tmp_path)


def test_a_relative_run_path_that_is_not_there_says_where_it_was_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a notebook's kernel, started in the notebook's own folder
    with pytest.raises(infodisent.NotARunError) as caught:
        infodisent.open_run("runs/demo")
    said = str(caught.value)
    assert said.startswith("runs/demo does not exist") and str(tmp_path) in said and "make demo" in said


def test_a_run_that_failed_before_training_can_be_retried(tmp_path):
    cfg = tiny_cfg(tmp_path, fit=FitConfig(epochs=2), max_classes=3)
    original = infodisent.pipeline._probe

    def fail(*a, **k):
        raise RuntimeError("killed before training")

    infodisent.pipeline._probe = fail
    try:
        with pytest.raises(RuntimeError):
            train_run(cfg)
    finally:
        infodisent.pipeline._probe = original
    assert not (tmp_path / "run" / "config.json").exists()  # nothing marks it as a run
    assert train_run(cfg).metrics.num_classes == 3  # the retry needs neither --resume nor --overwrite


def test_resume_with_a_checkpoint_of_another_head_is_refused(tmp_path):
    cfg = tiny_cfg(tmp_path, fit=FitConfig(epochs=1), max_classes=3)
    train_run(cfg)
    (tmp_path / "run" / "config.json").unlink()  # as if it were killed during training
    with pytest.raises(CheckpointMismatchError, match="3 classes.*5 classes"):
        train_run(tiny_cfg(tmp_path, fit=FitConfig(epochs=2), max_classes=5, resume=True))


def test_options_are_checked_where_they_are_given(tmp_path):
    with pytest.raises(ValueError, match="pooling='median'; choose one of max, avg"):
        infodisent.HeadConfig(pooling="median")
    with pytest.raises(ValueError, match="orthogonal_map"):
        infodisent.HeadConfig(orthogonal_map="qr")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet1k'"):
        RunConfig(out=str(tmp_path), dataset="imagenet1k", root="x")
    with pytest.raises(ValueError, match="needs a root"):
        RunConfig(out=str(tmp_path), dataset="cub")
    with pytest.raises(ValueError, match="unknown split"):
        infodisent.DatasetSpec("parts", None, "dev")
    with pytest.raises(ValueError, match="resume and overwrite"):
        RunConfig(out=str(tmp_path), resume=True, overwrite=True)


def test_a_moved_dataset_root_is_used(tmp_path, capsys):
    from helpers import write_image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            for k in range(3):
                write_image(root / split / c / f"{k}.png", k + (c == "b") * 10, size=(64, 64))
    cfg = tiny_cfg(tmp_path, dataset="folder", root=str(root), parts=None, fit=FitConfig(epochs=1))
    train_run(cfg)
    moved = tmp_path / "moved"
    root.rename(moved)
    r = infodisent.open_run(cfg.out)
    assert r.dataset("test", root=str(moved)).root == moved
    with pytest.raises(FileNotFoundError):
        r.dataset("test")  # the recorded root is gone


def test_opening_a_run_and_its_index_reads_no_image(tiny_run, monkeypatch):
    from infodisent.core.backbone import Backbone
    from infodisent.data.datasets import PartsDataset

    _, _, cfg = tiny_run
    calls = []
    monkeypatch.setattr(PartsDataset, "load_image", lambda self, i: calls.append(("read", i)))
    monkeypatch.setattr(Backbone, "forward", lambda self, x: calls.append(("forward", len(x))))
    r = infodisent.open_run(cfg.out)
    index = r.index("train")
    assert index.k == 4 and len(index.prototypes(3, "pos")) <= 4 and r.metrics.num_classes == 6
    assert calls == []


def test_a_runs_model_is_rebuilt_without_a_forward_of_the_backbone(run, tmp_path, monkeypatch):
    """config.json records the map's shape and whether the classifier reads it; a run written without them
    (an older run) still opens, by one forward of a blank image."""
    result, _ = run
    trained = result.model.backbone
    net = type(trained.model)
    forward = net.forward_features
    calls = []
    monkeypatch.setattr(net, "forward_features", lambda self, x: calls.append(len(x)) or forward(self, x))
    recorded = json.loads((result.run_dir / "config.json").read_text())
    assert recorded["backbone"]["feature_shape"] == [96, 2, 2] and recorded["backbone"]["classifier_reads_map"] is True
    opened = infodisent.open_run(result.run_dir).model.backbone
    assert calls == []
    assert (opened.feature_shape(), opened.classifier_reads_map) == (trained.feature_shape(), trained.classifier_reads_map)
    older = tmp_path / "older"
    shutil.copytree(result.run_dir, older)
    del recorded["backbone"]["classifier_reads_map"]
    (older / "config.json").write_text(json.dumps(recorded))
    probed = infodisent.open_run(older).model.backbone
    assert calls == [1]
    assert (probed.feature_shape(), probed.classifier_reads_map) == (trained.feature_shape(), True)


def test_a_run_with_augmented_views_mines_from_its_own_cache(tmp_path):
    from infodisent.pipeline import mine_run

    cfg = tiny_cfg(tmp_path, fit=FitConfig(epochs=1), max_classes=3, views=2)
    train_run(cfg)
    r = infodisent.open_run(cfg.out)
    cache = r.cache("train")
    assert cache is not None and cache.manifest["key"]["views"] == 2
    index = mine_run(r, "train", k=2, num_workers=0, progress=False)
    assert index.meta.source == "cache" and index.meta.num_valid == len(r.dataset("train"))
    d = int(index.table["channel"][0])
    patch = r.renderer("train").prototypes(d, "pos", 1)[0]
    row = int(np.flatnonzero(cache.indices[: len(r.dataset("train"))] == patch.image)[0])  # view 0 rows come first
    np.testing.assert_array_equal(r.renderer("train").feature_maps([patch.image])[0], cache.features[row])


def test_a_probe_too_large_for_memory_gets_float16_rows_and_minibatches(tmp_path, monkeypatch):
    from infodisent.train import probe

    seen = []
    fit = probe.fit_linear_probe

    def spy(x, y, *a, **k):
        seen.append(x.dtype)
        return fit(x, y, *a, **k)

    monkeypatch.setattr(infodisent.pipeline, "IN_MEMORY", 1000)  # "ImageNet": more entries than this
    monkeypatch.setattr(probe, "IN_MEMORY", 1000)
    monkeypatch.setattr(infodisent.pipeline, "fit_linear_probe", spy)
    result = train_run(tiny_cfg(tmp_path, fit=FitConfig(epochs=1), max_classes=3))
    assert seen == [torch.float16] and result.metrics.probe.solver == "minibatch"
    assert 0 <= result.metrics.linear_probe.top1 <= 1
