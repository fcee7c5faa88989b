"""``python -m infodisent`` and ``torchrun --nproc_per_node=N -m infodisent train ...``: a face (the top floor,
tests/test_layout.py), which only calls :func:`infodisent.cli.main`."""

import sys

from .cli import main

sys.exit(main())
