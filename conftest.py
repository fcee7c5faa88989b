"""nbval runs the tutorials as another machine would: other CPU kernels, and a cold feature cache.

(At the root rather than in ``notebooks/tutorials``: a second ``conftest`` module beside the notebooks would
be imported under the same name as ``tests/conftest.py``.)

The committed outputs are written on one machine; its trained numbers differ from another CPU's in the
last bits, and training carries that on. The tutorials therefore check trained numbers within stated
tolerances (``infodisent.tutorials.notebook.check``), and this file makes every ``make test`` prove that those
tolerances hold: each tutorial's kernel runs with torch and oneDNN held to AVX2 kernels (not this
machine's widest ones, whichever wrote the outputs) and with ``INFODISENT_CACHE`` in a fresh temporary
folder, so features are extracted anew under those kernels. Runs the notebooks already trained under
``notebooks/tutorials/runs`` are reused (``open_or_train``); a fresh clone has none, so CI trains them all.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
_cold_cache: str | None = None


def _kernel_env() -> dict[str, str]:
    global _cold_cache  # one cold cache per pytest session, shared by the tutorials (they reuse one run)
    if _cold_cache is None:
        _cold_cache = tempfile.mkdtemp(prefix="infodisent-cold-cache-")
    return {**PORTABLE_ENV, "INFODISENT_CACHE": _cold_cache}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """nbval starts a notebook's kernel while setting up its first cell: it inherits this environment."""
    if not str(item.fspath).endswith(".ipynb"):
        yield
        return
    env = _kernel_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pytest_unconfigure(config):
    if _cold_cache is not None:
        shutil.rmtree(_cold_cache, ignore_errors=True)
