"""Run under ``torchrun``: train like ``infodisent train`` (the arguments: train and its flags) and kill rank 0
with SIGKILL right after the checkpoint of epoch ``KILL_AFTER_EPOCH`` is written: a crash, not a stop."""

import os
import signal
import sys

from infodisent.cli import _data_config, _run_config, build_parser
from infodisent.pipeline import train_run
from infodisent.train.monitor import Monitor


def main() -> None:
    after = int(os.environ["KILL_AFTER_EPOCH"])
    args = build_parser().parse_args(sys.argv[1:])  # "train" and its flags
    cfg = _run_config(args, _data_config(args, resume=args.resume, overwrite=args.overwrite))

    def on_epoch(row: dict) -> None:
        if row["epoch"] == after and int(os.environ.get("RANK", "0")) == 0:
            os.kill(os.getpid(), signal.SIGKILL)

    train_run(cfg, Monitor(on_epoch=on_epoch))


if __name__ == "__main__":
    main()
