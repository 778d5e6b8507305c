"""Builds the compiled core in ``_trim``.

``TRIMMER_DEBUG=1`` gives a debug build: bounds and wraparound checks on,
``-O0 -g``, and Cython line tracing, so a C-level bug can be hunted with gdb or
a sanitizer instead of guessed at.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("TRIMMER_DEBUG", "") not in ("", "0")

if DEBUG:
    compile_args = ["-O0", "-g", "-UNDEBUG"]
    macros = [("CYTHON_TRACE_NOGIL", "1")]
    directives = {"boundscheck": True, "wraparound": True, "linetrace": True,
                  "initializedcheck": True}
else:
    compile_args = ["-O3"]
    macros = []
    directives = {"boundscheck": False, "wraparound": False,
                  "initializedcheck": False}
directives.update({"language_level": "3", "cdivision": True})

extensions = [
    Extension(
        "_trim._kernel",
        ["_trim/_kernel.pyx"],
        include_dirs=[np.get_include()],
        define_macros=macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            build_dir="build/cython" if not DEBUG else "build/cython-debug"))
