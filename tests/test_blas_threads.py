"""Importing flashmm keeps BLAS to one thread: no spinning worker takes a core."""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = (
    "import os, flashmm, numpy; "
    "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"
)


def _run(env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_numpy_loaded_through_flashmm_starts_no_blas_worker() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    }
    assert _run(env) == ["1", "1"]


def test_an_explicit_setting_is_kept() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    assert _run(env)[0] == "2"
