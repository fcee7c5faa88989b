"""Several processes (torchrun, gloo on loopback) give the one-process run: head, metrics, prototype index,
and a resume after a crash with one or two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from infodisent.distributed import Shard, ShardedBatchSampler, global_batches, unshard

HERE = Path(__file__).parent
# The CLI's flags for a small run: a compact head (pruned to K=3, with fine-tuning) and a last global
# batch of 4 images (180 training images, batches of 16) that two processes split 2 + 2.
FLAGS = ["--dataset", "parts", "--backbone", "test_resnet", "--weights", "random", "--image-size", "64",
         "--max-classes", "3", "--epochs", "3", "--batch-size", "16", "--num-workers", "0", "--quiet",
         "--prune-k", "3", "--finetune-epochs", "2", "--round-epochs", "1"]
# float32 sums in another order (gradients averaged over processes, logits gathered): the heads agree to
# this, far below anything the metrics show
HEAD_TOL = 1e-6


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(*args: str, procs: int = 1, script: str | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    """``python -m infodisent ...``, or the same under ``torchrun --standalone --nproc_per_node=procs``."""
    target = [str(HERE / script)] if script else ["-m", "infodisent"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    cmd = [*launcher, *target, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env or _env(), timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _train(out: Path, cache: Path, *extra: str, procs: int = 1, **kw) -> subprocess.CompletedProcess:
    return _cli("train", *FLAGS, "--cache-dir", str(cache), "--out", str(out), *extra, procs=procs, **kw)


def _head_gap(a: Path, b: Path) -> float:
    ha, hb = load_file(str(a / "head.safetensors")), load_file(str(b / "head.safetensors"))
    assert ha.keys() == hb.keys()
    return max(float((ha[k] - hb[k]).abs().max()) for k in ha)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, its own feature cache."""
    root = tmp_path_factory.mktemp("ddp")
    _train(root / "one", root / "cache_one")
    return root


def test_two_processes_train_the_one_process_head(one_process):
    root = one_process
    out = _train(root / "two", root / "cache_two", procs=2)  # the two processes also extract the cache
    assert out.stdout.count("run directory:") == 1  # rank 0 alone prints
    assert "extracted now" in out.stdout
    assert _head_gap(root / "one", root / "two") < HEAD_TOL
    one, two = (json.loads((root / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert one.keys() == two.keys()
    for key in ("infodisent", "linear_probe"):  # evaluation and probe gathered over both processes
        assert two[key]["top1"] == pytest.approx(one[key]["top1"], abs=1e-9)
    assert two["num_test_evaluated"] == one["num_test_evaluated"] == 90
    h1, h2 = (pd.read_csv(root / r / "history.csv") for r in ("one", "two"))
    # 3 dense + 2 rounds + the frontier's K=16 (2) + 2 fine-tuning
    assert h1["epoch"].tolist() == h2["epoch"].tolist() == list(range(1, 10))
    assert [p["channels_per_class"] for p in two["frontier"]] == [p["channels_per_class"] for p in one["frontier"]] \
        == [None, 16, 3]
    assert np.allclose(h1["train_loss"], h2["train_loss"], atol=1e-6)
    assert (h1["train_top1"] == h2["train_top1"]).all()
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(p.name for p in (root / "one").iterdir())
    c1, c2 = (json.loads((root / r / "config.json").read_text())["run"] for r in ("one", "two"))
    assert {k: v for k, v in c1.items() if k not in ("out", "cache_dir")} == \
        {k: v for k, v in c2.items() if k not in ("out", "cache_dir")}
    # one shared cache written by rank 0: the same rows as the one-process cache (the backbone's float32
    # sums differ with the batch's other images, so fp16 values may differ in the last bit)
    for e1 in sorted((root / "cache_one").glob("*/features.npy")):
        f1, f2 = np.load(e1), np.load(root / "cache_two" / e1.parent.name / "features.npy")
        assert f1.shape == f2.shape and np.abs(f1.astype(np.float32) - f2.astype(np.float32)).max() < 2e-2


def test_two_processes_mine_and_evaluate_as_one(one_process, tmp_path):
    """Mining (from the cache and streamed), the explanation metrics and CUB stability's noisy passes, each
    shared out over two processes, give the one-process results (one launch per process count)."""
    run, cache = one_process / "one", one_process / "cache_one"
    for procs in (1, 2):
        _cli(str(run), str(cache), str(tmp_path / f"procs_{procs}"), procs=procs, script="ddp_mine_evaluate.py")
    one, two = tmp_path / "procs_1", tmp_path / "procs_2"
    for source in ("cache", "stream"):  # per-process top-k lists merged: exactly the one-process index
        for f in ("index.csv", "v.npy", "positions.npy", "labels.npy"):
            assert (two / source / f).read_bytes() == (one / source / f).read_bytes(), f"{f} differs ({source})"
        assert len(pd.read_csv(one / source / "index.csv")) > 0
    e1, e2 = (json.loads((d / "evaluation.json").read_text()) for d in (one, two))
    assert e1["explanations"]["parts"]["purity"] == e2["explanations"]["parts"]["purity"]
    assert e1 == e2
    # CUB stability's noisy passes, shared out by batch: the one-process positions, noise included
    n1, n2 = np.load(one / "noise.npz"), np.load(two / "noise.npz")
    assert n1["clean"].shape == (90, 96) and np.array_equal(n1["clean"], n2["clean"])
    assert np.array_equal(n1["noisy"], n2["noisy"]) and not np.array_equal(n1["clean"], n1["noisy"])


def test_two_processes_stream_the_one_process_head(tmp_path):
    flags = ["--no-cache", "--epochs", "1", "--finetune-epochs", "1", "--prune-ratio", "1"]  # each epoch streams
    _train(tmp_path / "one", tmp_path / "cache", *flags)
    _train(tmp_path / "two", tmp_path / "cache", *flags, "--num-workers", "1", procs=2)
    assert _head_gap(tmp_path / "one", tmp_path / "two") < HEAD_TOL


def test_a_killed_two_process_run_resumes_with_one_or_two_processes(one_process, tmp_path):
    crashed = _train(tmp_path / "killed", one_process / "cache_one", procs=2, script="ddp_kill.py",
                     env={**_env(), "KILL_AFTER_EPOCH": "1"}, check=False)
    killed = tmp_path / "killed"
    assert crashed.returncode != 0 and (killed / "history.csv").is_file(), crashed.stderr[-3000:]
    assert pd.read_csv(killed / "history.csv")["epoch"].tolist() == [1]  # epoch 1's checkpoint, no head
    assert not (killed / "head.safetensors").exists()
    for procs in (1, 2):
        again = tmp_path / f"resumed_{procs}"
        shutil.copytree(killed, again)
        _train(again, one_process / "cache_one", "--resume", procs=procs)
        assert _head_gap(one_process / "one", again) < HEAD_TOL, f"resumed with {procs}"
        assert pd.read_csv(again / "history.csv")["epoch"].tolist() == list(range(1, 10))


def test_sharded_batches_are_the_global_batches_split_by_rank():
    whole = list(global_batches(11, 4, True, seed=3))
    assert [len(b) for b in whole] == [4, 4, 3] and sorted(np.concatenate(whole)) == list(range(11))
    assert all((a == b).all() for a, b in zip(whole, global_batches(11, 4, True, seed=3)))  # every process draws it
    parts = [list(ShardedBatchSampler(11, 4, True, 3, Shard(r, 3))) for r in range(3)]
    for b, batch in enumerate(whole):
        assert sorted(i for r in range(3) for i in parts[r][b]) == sorted(batch.tolist())
        assert parts[0][b] == batch[0::3].tolist()
    assert len(parts[2][2]) == 1 and len(list(ShardedBatchSampler(1, 4, False, 0, Shard(1, 2)))[0]) == 0  # empty part
    # unshard puts the strided parts back in the one-process order
    batches = [torch.arange(5.0), torch.arange(5.0, 8.0)]
    pieces = [[b[r::2] for b in batches] for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(unshard(pieces), batches))
