"""``python -m infodisent`` and ``torchrun --nproc_per_node=N -m infodisent train ...``."""

import sys

from .cli import main

sys.exit(main())
