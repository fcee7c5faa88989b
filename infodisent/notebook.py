"""Helpers for notebooks: one set-up line, and checks of trained numbers within stated tolerances.

Trained numbers differ between machines in their last bits (another CPU's kernels, another GPU), and
training carries those differences on; a notebook whose test compares them as strings passes only where
it was written. The tutorials therefore show trained numbers in cells whose output nbval does not
compare (tagged ``nbval-ignore-output``) and check them in the next cell by what they mean:

    >>> check("compact top-1", run.metrics.infodisent.top1, 0.78, within=0.03)
    ✓ compact top-1 = 0.78 ± 0.03

The printed line is the same on every machine (nbval compares it); a value outside its tolerance raises
:class:`CheckFailed`, naming the value, so the cell fails. Exact identities get ``within`` at the
arithmetic's precision (``check("sum - logit", err, 0, within=1e-5)``); counts and names get none.
"""

from __future__ import annotations

import math
from typing import Any


class CheckFailed(AssertionError):
    """A notebook number outside its stated tolerance."""


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check(what: str, value: Any, expected: Any, within: float = 0.0) -> None:
    """Print ``✓ what = expected ± within`` when ``|value - expected| <= within`` (or ``value == expected``
    for anything but numbers), else raise :class:`CheckFailed` with the value."""
    if isinstance(value, (int, float)) and isinstance(expected, (int, float)) and not isinstance(value, bool):
        ok = math.isfinite(value) and abs(value - expected) <= within + 1e-12
    else:
        ok = value == expected
    stated = f"{_fmt(expected)} ± {_fmt(within)}" if within else _fmt(expected)
    if not ok:
        raise CheckFailed(f"{what} is {_fmt(value)}, expected {stated}")
    print(f"✓ {what} = {stated}")


def setup(threads: int | None = 2) -> None:
    """What every tutorial starts with: torch on ``threads`` threads (the 2-core machines they are tested
    on; None leaves torch's choice), pandas tables at 3 decimals, plotly figures as data (JupyterLab,
    VS Code; in Colab set ``plotly.io.renderers.default = "colab"``) and PIL images as JPEG only."""
    import pandas as pd
    import plotly.io as pio
    import torch
    from PIL import Image

    if threads is not None:
        torch.set_num_threads(threads)
    pd.set_option("display.precision", 3)
    pio.renderers.default = "plotly_mimetype"
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every notebook kernel
        return
    shell = get_ipython()
    if shell is not None:  # pictures as JPEG only: smaller notebook files
        shell.display_formatter.formatters["image/png"].for_type(Image.Image, lambda img: None)


__all__ = ["CheckFailed", "check", "setup"]
