"""The ablation grid (infodisent.studies.ablations): one run per variant, one table."""

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file

from infodisent.records.options import FitConfig
from infodisent.studies.ablations import ablation_grid


def test_ablation_grid_writes_one_table(tmp_path):
    cfg = tiny_config(tmp_path, out=str(tmp_path / "grid"), max_classes=3, fit=FitConfig(epochs=2))
    table = ablation_grid(cfg, channels_per_class=2, stability=False, finetune_epochs=1)
    assert list(table["variant"]) == ["infodisent", "no_rotation", "avg_pooling", "unconstrained_w", "gumbel", "side_sparse",
                                      "sparse_softmax", "sparse_no_rotation", "compact"]
    assert table["channels_per_class"].isna().tolist() == [True] * 5 + [False] * 4  # dense rows are dense
    disk = pd.read_csv(tmp_path / "grid" / "ablations.csv")
    assert disk.shape == table.shape and disk["variant"].tolist() == table["variant"].tolist()
    row = table.set_index("variant")
    assert not row.loc["no_rotation", "rotation"] and row.loc["avg_pooling", "pooling"] == "avg"
    assert row.loc["side_sparse", "global_size"] <= 3 * 2 and row.loc["side_sparse", "loss"] == "sigmoid"
    assert row.loc["sparse_softmax", "global_size"] <= 3 * 2 and row.loc["sparse_softmax", "loss"] == "softmax"
    for col in ("top1", "parts.purity", "parts.pointing_game"):
        assert table[col].between(0, 1).all(), col
    assert (table["global_size"] >= 1).all() and (table["global_size"] <= 96).all()
    U = load_file(str(tmp_path / "grid" / "no_rotation" / "head.safetensors"))["U"]
    torch.testing.assert_close(U, torch.eye(96))
    assert np.isfinite(table["faithfulness_area_logit"]).all()
    again = ablation_grid(cfg, channels_per_class=2, names=["avg_pooling"], stability=False)  # one row rerun, the rest kept
    assert list(again["variant"]) == list(table["variant"])
    pd.testing.assert_frame_equal(again.drop(index=2), table.drop(index=2), check_dtype=False)
    hist = pd.read_csv(tmp_path / "grid" / "sparse_softmax" / "history.csv")
    W = load_file(str(tmp_path / "grid" / "sparse_softmax" / "head.safetensors"))["W"]
    before = pd.read_csv(tmp_path / "grid" / "ablations.csv")
    ablation_grid(cfg, channels_per_class=2, names=["sparse_softmax"], stability=False, finetune_epochs=1,
                           resume=True)  # finished: evaluated again, not trained again
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "grid" / "sparse_softmax" / "history.csv"), hist)
    torch.testing.assert_close(load_file(str(tmp_path / "grid" / "sparse_softmax" / "head.safetensors"))["W"], W)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "grid" / "ablations.csv"), before)  # the same numbers
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_grid(cfg, names=["nope"])
