"""Run with or without ``torchrun``: what a saved run's later commands give, in one process group. Rank 0
writes, under the folder given as the third argument: the prototype index of the training split mined from
the cache (``cache/``) and streamed through the backbone (``stream/``), as ``infodisent mine --k 5`` does;
the explanation metrics of the test split (``evaluation.json``), as ``infodisent evaluate --explanations
--k 5`` does; and CUB stability's clean and noisy positions of the test images (``noise.npz``).

Arguments: the run directory, its feature cache root, the output folder."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from infodisent import distributed
from infodisent.eval.part_metrics import noisy_positions
from infodisent.pipeline import evaluate_run, mine_run
from infodisent.records.serialize import to_dict
from infodisent.run import open_run

INDEX_FILES = ("index.csv", "v.npy", "positions.npy", "labels.npy")


def main() -> None:
    run_dir, cache, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    distributed.setup("cpu")
    try:
        writer = distributed.current().main
        for name, use_cache in (("cache", True), ("stream", False)):
            index = mine_run(open_run(run_dir, cache_dir=cache), "train", k=5, use_cache=use_cache, batch_size=64,
                             num_workers=0, progress=False)
            if writer:
                (out / name).mkdir(parents=True, exist_ok=True)
                for f in INDEX_FILES:
                    shutil.copyfile(index.path / f, out / name / f)
            distributed.barrier()
        run = open_run(run_dir, cache_dir=cache)
        ev = evaluate_run(run, "test", batch_size=64, num_workers=0, progress=False, explanations=True, k=5)
        ds = run.dataset("test")
        clean, noisy = noisy_positions(run.model, ds, np.arange(len(ds)), seed=3, batch_size=4)
        if writer:
            (out / "evaluation.json").write_text(json.dumps(to_dict(ev)))
            np.savez(out / "noise.npz", clean=clean, noisy=noisy)
    finally:  # as the CLI does: a process that exits with the group alive can abort in gloo's teardown
        if dist.is_initialized():
            distributed.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
