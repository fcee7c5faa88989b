"""Sanity checks (Adebayo et al. 2018): the backbone's stages, their re-initialisation, and both checks on a
small trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import infodisent
from infodisent.cli import main
from infodisent.errors import InputError
from infodisent.records.results import LabelRandomisation, SanityChecks
from infodisent.studies.sanity import (
    backbone_stages,
    label_randomisation,
    model_randomisation,
    purity_chance,
    randomise,
)
from infodisent.viz import sentences


def test_stages_follow_timms_feature_info(tiny_backbone):
    model = tiny_backbone.model
    stages = backbone_stages(model)
    assert len(stages) == 5
    assert all(n.startswith("layer4") for n in stages[-1]) and any(n.startswith("layer3") for n in stages[-2])
    assert not any(n == "fc" for s in stages for n in s)  # the classifier is not a stage
    assert stages[0][0].startswith("conv1")  # what comes before the first named stage belongs to it


def test_randomising_a_stage_changes_it_and_nothing_else(tiny_backbone):
    model = tiny_backbone.model
    net, count = randomise(model, 1, seed=0)
    assert count == len(backbone_stages(model)[-1])
    before, after = dict(model.named_parameters()), dict(net.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith("layer4") for n in changed)
    again, _ = randomise(model, 1, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))  # seeded
    two, _ = randomise(model, 2, seed=0)
    assert any(not torch.equal(before[n], p) for n, p in two.named_parameters() if n.startswith("layer3"))
    with pytest.raises(InputError, match="stages"):
        randomise(model, 6)


def test_model_randomisation_compares_the_same_images(tiny_run):
    _, _, cfg = tiny_run
    run = infodisent.open_run(cfg.out)
    levels, n = model_randomisation(run, images=8, channels=2, cascade=2)
    assert n == 8 and [lv.stages for lv in levels] == [1, 2]
    assert levels[1].modules > levels[0].modules > 0
    for lv in levels:
        assert -1 <= lv.map_spearman < 0.999 and -1 <= lv.ranking_spearman <= 1 and 0 <= lv.top1 <= 1
        assert lv.map_ssim < 0.999


class _Uniform:
    """Every pixel is part 0: any patch shows it."""

    def __init__(self, n: int = 4, size: int = 64):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def masks(self, i):
        m = np.zeros((2, self.size, self.size), bool)
        m[0] = True
        return m


def test_purity_of_random_patches(tiny_backbone):
    assert purity_chance(_Uniform(), tiny_backbone.transform, (2, 2), channels=5, k=4) == 1.0
    empty = _Uniform()
    empty.masks = lambda i: np.zeros((2, 64, 64), bool)
    assert purity_chance(empty, tiny_backbone.transform, (2, 2), channels=5, k=4) == 0.0


def test_label_randomisation_and_the_cli(tiny_run, capsys, tmp_path):
    _, _, cfg = tiny_run
    shutil.copytree(cfg.out, tmp_path / "run")  # evaluate writes into metrics.json: leave the shared run alone
    run = infodisent.open_run(tmp_path / "run")
    shuffled = label_randomisation(run)
    assert 0 <= shuffled.purity <= 1 and 0 < shuffled.purity_chance <= 1
    assert 0 <= shuffled.pointing_game <= 1 and 0 < shuffled.pointing_game_chance < 1
    assert 0 <= shuffled.top1 <= 1
    # the label-free reference: the same head untrained, scored the same way
    assert 0 <= shuffled.purity_untrained <= 1 and 0 <= shuffled.pointing_game_untrained <= 1
    line = sentences.sanity(SanityChecks(split="test", images=0, channels=0, labels=shuffled))
    assert f"untrained head {shuffled.purity_untrained:.3f}" in line and f"chance {shuffled.purity_chance:.3f}" in line
    with pytest.raises(InputError, match="untrained_seeds must be at least 1"):
        label_randomisation(run, untrained_seeds=0)
    older = {k: v for k, v in shuffled.to_dict().items() if "untrained" not in k}  # metrics.json of a version before
    assert LabelRandomisation.from_dict(older).purity_untrained is None
    assert "untrained" not in sentences.sanity(SanityChecks(split="test", images=0, channels=0,
                                                            labels=LabelRandomisation.from_dict(older)))
    rc = main(["evaluate", str(run.path), "--sanity", "--quiet", "--num-workers", "0"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [m["stages"] for m in printed["sanity"]["model"]] == [1, 2, 3]
    assert printed["sanity"]["labels"]["purity_chance"] == pytest.approx(shuffled.purity_chance)
    assert json.loads((run.path / "metrics.json").read_text())["sanity"]["split"] == "test"
    written = json.loads((run.path / "evaluation_parts_test.json").read_text())["sanity"]  # and beside the accuracy
    assert written["labels"]["purity_chance"] == pytest.approx(shuffled.purity_chance)
