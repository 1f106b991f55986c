"""Build the compiled hot path (Cython extensions in ``flashmm._core``).

Everything else about the package lives in pyproject.toml. Generated C goes to
``build/cython`` so it never lands in the source tree or the wheel.
"""

from __future__ import annotations

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

_NUMPY = {
    "include_dirs": [numpy.get_include()],
    "define_macros": [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    "extra_compile_args": ["-O3"],
}

extensions = [
    Extension("flashmm._core.book", ["src/flashmm/_core/book.pyx"], **_NUMPY),
    Extension("flashmm._core.wire", ["src/flashmm/_core/wire.pyx"], **_NUMPY),
    Extension("flashmm._core.tickcall", ["src/flashmm/_core/tickcall.pyx"], **_NUMPY),
]

setup(
    ext_modules=cythonize(
        extensions,
        build_dir="build/cython",
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
        },
    ),
)
