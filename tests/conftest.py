"""Shared fixtures: where the project's shared data lives, and skips when it is absent."""

import os
from pathlib import Path

import numpy as np
import pytest

import xpnet

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XPNET_SHARED", REPO.parent / "shared"))
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture
def book_fixture():
    """Path of one of the book's pretrained parameter pickles (skips when absent)."""
    return lambda name: _require(SHARED / "fixtures" / "book" / name)


@pytest.fixture
def mnist10k_dir():
    """Directory with 10,000 real MNIST digits as IDX files (skips when absent)."""
    return _require(SHARED / "data" / "mnist-10k")


@pytest.fixture
def fashion_dir():
    """Directory of the full Fashion-MNIST IDX files (skips when absent)."""
    return _require(FASHION_SYSTEM_DIR)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, and leaves the default dtype as it was."""
    xpnet.seed(0)
    np.random.seed(0)  # noqa: NPY002 - the book's scripts draw from the legacy global state
    dtype = xpnet.get_default_dtype()
    yield
    xpnet.set_default_dtype(dtype)
