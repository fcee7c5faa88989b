"""Fidelity to the user's classifier: the black box read from the cached maps, agreement, and training that
matches the black box's logits (``--teacher``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infodisent.cli import main
from infodisent.core.weights import load_backbone
from infodisent.data.datasets import from_spec
from infodisent.errors import InputError
from infodisent.eval.fidelity import agreement, compare
from infodisent.pipeline import evaluate_run, train_run
from infodisent.records.data import PartsConfig
from infodisent.records.options import FitConfig
from infodisent.records.run import RunConfig
from infodisent.run import open_run
from infodisent.train.teacher import BlackBox, black_box, classifier_columns

CLASSES = 5


@pytest.fixture(scope="module")
def own_classifier():
    """test_resnet with a (random) classifier of the dataset's 5 classes: a model "fine-tuned" on them."""
    return load_backbone("test_resnet", "random", image_size=64, model_kwargs={"num_classes": CLASSES})


def _config(tmp_path, **kw) -> RunConfig:
    return RunConfig(
        out=str(tmp_path / "run"), backbone="test_resnet", weights="random", image_size=64, max_classes=CLASSES,
        model_kwargs={"num_classes": CLASSES},
        parts=PartsConfig(image_size=64, train_per_class=12, test_per_class=6, scale=(0.3, 0.5)),
        cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False, fit=FitConfig(epochs=15), sparse=None, **kw)


def test_which_outputs_are_the_datasets_classes(tiny_backbone, own_classifier, tmp_path):
    ds = from_spec(_config(tmp_path).dataset_spec("test"))
    assert classifier_columns(own_classifier, ds) == ("own", pytest.approx(np.arange(CLASSES)))
    assert classifier_columns(tiny_backbone, ds) is None  # 1000 ImageNet outputs, and the parts classes are not ImageNet's

    class Subset:  # an ImageNet-layout subset: its classes are ImageNet outputs 7, 3 and 900
        num_classes, imagenet_index, name = 3, [7, 3, 900], "subset"
    kind, cols = classifier_columns(tiny_backbone, Subset())
    assert kind == "imagenet" and cols.tolist() == [7, 3, 900]
    Subset.imagenet_index = [7, -1, 900]  # one class ImageNet does not have
    assert classifier_columns(tiny_backbone, Subset()) is None
    with pytest.raises(InputError, match="no black box"):
        black_box(tiny_backbone, ds)


def test_the_black_box_on_maps_is_the_model_on_images(own_classifier):
    x = torch.randn(4, 3, 64, 64)
    assert own_classifier.classifier_reads_map
    bb = BlackBox(own_classifier, np.array([4, 0, 2]))
    np.testing.assert_allclose(bb(own_classifier(x)), own_classifier.model(x)[:, [4, 0, 2]], rtol=1e-5, atol=1e-6)
    vit = load_backbone("test_vit", "random")
    assert not vit.classifier_reads_map  # tokens: its classifier reads the class token, not InfoDisent's map
    with pytest.raises(InputError, match="does not"):
        BlackBox(vit, np.arange(3))


def test_compare_counts_agreement_and_kl():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    black = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    a = compare(logits, black, torch.tensor([0, 1, 2, 0]), "own")
    assert a.top1 == 0.75 and a.num_images == 4
    assert a.black_box.top1 == 0.75
    p, q = torch.softmax(black, 1), torch.log_softmax(logits, 1)
    assert a.kl == pytest.approx(float((p * (p.log() - q)).sum(1).mean()), rel=1e-6)
    same = compare(black, black, torch.tensor([0, 1, 2, 0]), "own")
    assert same.top1 == 1.0 and same.kl == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(InputError):
        compare(logits[:0], black[:0], torch.tensor([], dtype=torch.long), "own")


def test_teacher_training_follows_the_black_box(tmp_path):
    labels_run = train_run(_config(tmp_path / "labels"))
    teacher_run = train_run(_config(tmp_path / "teacher", teacher=1.0))
    a_labels, a_teacher = labels_run.metrics.agreement, teacher_run.metrics.agreement
    assert a_labels is not None and a_teacher is not None and a_teacher.classifier == "own"
    assert a_teacher.num_images == a_labels.num_images == CLASSES * 6
    # the random-init classifier is the black box: the labels say little about it, its own logits all
    assert a_teacher.top1 >= 0.9 and a_teacher.top1 > a_labels.top1 + 0.2
    assert a_teacher.kl < a_labels.kl
    written = json.loads((tmp_path / "teacher" / "run" / "metrics.json").read_text())
    assert written["agreement"]["top1"] == pytest.approx(a_teacher.top1)
    assert json.loads((tmp_path / "teacher" / "run" / "config.json").read_text())["run"]["teacher"] == 1.0
    # evaluate recomputes it from the images' cache, and the images themselves give the same numbers
    run = open_run(tmp_path / "teacher" / "run")
    again = evaluate_run(run, "test", progress=False, num_workers=0).agreement
    assert again.top1 == pytest.approx(a_teacher.top1) and again.kl == pytest.approx(a_teacher.kl, rel=1e-3)
    streamed = agreement(run.model, run.dataset("test"), None)
    assert streamed.top1 == pytest.approx(a_teacher.top1) and streamed.kl == pytest.approx(a_teacher.kl, rel=1e-3, abs=1e-4)


def test_teacher_errors_are_clear(tmp_path, capsys):
    with pytest.raises(InputError, match="teacher"):
        _config(tmp_path, teacher=0.0)
    # the ImageNet classifier of a random test_resnet has no outputs for the parts classes
    rc = main(["train", "--backbone", "test_resnet", "--weights", "random", "--image-size", "64", "--max-classes", "3",
               "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--epochs", "1", "--dense",
               "--num-workers", "0", "--quiet", "--teacher"])
    assert rc == 2
    assert "no black box" in capsys.readouterr().err



def _fine_tuned(path, classes: int) -> str:
    """test_resnet with a classifier of ``classes`` outputs, saved as a user's fine-tuned model would be."""
    from safetensors.torch import save_file

    model = load_backbone("test_resnet", "random", image_size=64, model_kwargs={"num_classes": classes}).model
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)  # a classifier that prefers some images
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _folder(root, classes=("heron", "wren"), train=10, test=5):
    from helpers import write_image

    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            for i in range(n):
                write_image(root / split / name / f"{i}.png", seed=1000 * c + 100 * (split == "test") + i, size=(64, 64))
    return root


def test_a_fine_tuned_classifier_of_the_users_classes_goes_through_the_cli(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    weights = _fine_tuned(tmp_path / "ft.safetensors", 2)
    common = ["--dataset", "folder", "--root", str(root), "--backbone", "test_resnet", "--image-size", "64",
              "--cache-dir", str(tmp_path / "c"), "--epochs", "25", "--lr", "0.05", "--dense", "--num-workers", "0",
              "--quiet"]
    rc = main(["train", *common, "--weights", weights, "--teacher", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    a = metrics["agreement"]
    assert a["classifier"] == "own" and a["num_images"] == 10
    assert a["top1"] >= 0.8  # trained on the black box's logits alone: it follows them on unseen images
    assert "agree" in out
    # the classifier's size came from the file, and the run reopens with it
    run = open_run(tmp_path / "run")
    assert run.model.backbone.num_classifier_classes == 2 and run.model.backbone.model_kwargs == {"num_classes": 2}
    assert run.config.model.backbone.model_kwargs is None  # the file's size is the file's: not asked, not recorded
    # --num-classes that says the same is accepted; one that contradicts the file is refused, naming both
    rc = main(["train", *common, "--weights", weights, "--num-classes", "3", "--out", str(tmp_path / "r3")])
    assert rc == 2 and "classifier of 2 classes" in capsys.readouterr().err
    # a classifier of another size than the dataset's classes: --teacher says so before anything trains
    other = _fine_tuned(tmp_path / "ft3.safetensors", 3)
    rc = main(["train", *common, "--weights", other, "--teacher", "--out", str(tmp_path / "r4")])
    err = capsys.readouterr().err
    assert rc == 2 and "has 3 classes and folder has 2" in err and "ft3.safetensors" in err
    assert not (tmp_path / "r4").exists()
    # the run opens with another fine-tuned file (e.g. on another machine), whose classifier size is its own
    again = open_run(tmp_path / "run", weights=other)
    assert again.model.backbone.num_classifier_classes == 3 and again.model.head.config.num_classes == 2
