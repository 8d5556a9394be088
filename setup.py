"""Build the Cython engine.

THPCORE_DEBUG=1 builds the debug engine: bounds checks, wraparound checks and
initialisation checks on, no optimisation. CI runs the test suite against both.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("THPCORE_DEBUG", "") not in ("", "0")

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]

ext = Extension(
    "thpcore._engine",
    ["src/thpcore/_engine.pyx"],
    extra_compile_args=compile_args,
    define_macros=[("THPCORE_DEBUG", "1" if DEBUG else "0")],
)

setup(
    ext_modules=cythonize(
        [ext],
        compiler_directives=directives,
        compile_time_env={"THPCORE_DEBUG": DEBUG},
        # Separate generated C per flavour, so switching flavours never reuses stale code.
        build_dir="build/cython-debug" if DEBUG else "build/cython-release",
        force=True,
    ),
)
