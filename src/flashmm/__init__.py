"""FlashMM: a predictive market maker for central-limit order books."""

from __future__ import annotations

import os as _os

# The hot path never calls BLAS, but OpenBLAS (numpy's, and SciPy's once Numba loads
# it) starts worker threads that spin and take a core from the event loop on a small
# machine. One BLAS thread, unless the environment says otherwise; this must run
# before numpy is first imported, which every entry point does through this package.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")
del _var

__version__ = "0.1.0"
