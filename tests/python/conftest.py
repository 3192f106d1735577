"""Shared pytest fixtures for lowbit's Python-side tests.

The `shim` fixture loads <build>/liblowbit_testshim.so (built by tests/CMakeLists.txt from
tests/python/shim/*.cpp), a C ABI over lowbit's internals that the tests drive with ctypes
and compare against the ecosystem's oracles (ml_dtypes, numpy, gguf, torch). The build
directory is $LOWBIT_BUILD_DIR, default `build`, relative to the repository root unless
absolute.
"""

import ctypes
import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIM_NAME = "liblowbit_testshim.so"


def build_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("LOWBIT_BUILD_DIR", "build"))
    return d if d.is_absolute() else REPO_ROOT / d


@pytest.fixture(scope="session")
def shim() -> ctypes.CDLL:
    path = build_dir() / SHIM_NAME
    if not path.is_file():
        pytest.skip(
            f"{path} not found: build it (cmake --build <dir> --target lowbit_testshim) "
            "and point LOWBIT_BUILD_DIR at <dir>"
        )
    return ctypes.CDLL(str(path))
