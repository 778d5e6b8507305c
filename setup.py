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

NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
# numpy's half-float conversions (npymath), so that float16 casts are numpy's own.
NPYMATH_DIR = os.path.join(os.path.dirname(np.get_include()), "lib")

extensions = [
    Extension(
        "_trim._kernel",
        ["_trim/_kernel.pyx"],
        include_dirs=[np.get_include()],
        depends=["_trim/_common.pxd", "_trim/_kernel.pxd"],
        define_macros=macros + NUMPY_MACROS,
        extra_compile_args=compile_args,
    ),
    Extension(
        "_trim.records._program",
        ["_trim/records/_program.pyx"],
        include_dirs=[np.get_include(), "_trim/records", "."],
        library_dirs=[NPYMATH_DIR],
        libraries=["npymath"],
        define_macros=macros + NUMPY_MACROS,
        # Dot products sum in element order: no fused multiply-add, whatever -march says.
        extra_compile_args=compile_args + ["-ffp-contract=off"],
        depends=["_trim/records/_program_cast.h", "_trim/_common.pxd", "_trim/_kernel.pxd"],
    ),
    Extension(
        "_trim.records._writer",
        ["_trim/records/_writer.pyx"],
        include_dirs=[np.get_include(), "_trim/records", "."],
        depends=["_trim/records/_writer_values.h"],
        define_macros=macros + NUMPY_MACROS,
        # The same float32 operations as numpy's, one at a time.
        extra_compile_args=compile_args + ["-ffp-contract=off"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            build_dir="build/cython" if not DEBUG else "build/cython-debug"))
