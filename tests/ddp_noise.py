"""Run with or without ``torchrun``: CUB stability's clean and noisy positions of a saved run's test images
(``noisy_positions``), written by rank 0 to the .npz file given as the second argument."""

import sys

import numpy as np
import torch.distributed as dist

from infodisent.data import distributed
from infodisent.eval.part_metrics import noisy_positions
from infodisent.run import Run


def main() -> None:
    distributed.setup("cpu")
    try:
        run = Run.open(sys.argv[1])
        ds = run.dataset("test")
        clean, noisy = noisy_positions(run.model, ds, np.arange(len(ds)), seed=3, batch_size=4)
        if distributed.current().main:
            np.savez(sys.argv[2], clean=clean, noisy=noisy)
    finally:  # as the CLI does: a process that exits with the group alive can abort in gloo's teardown
        if dist.is_initialized():
            distributed.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
