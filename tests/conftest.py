"""Shared test set-up: strict numerics, the GPU marker, float64 for gradient checks."""

from __future__ import annotations

import os

# Tests that need several devices create them on the host; set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import pytest  # noqa: E402


def _has_gpu() -> bool:
    try:
        return any(d.platform == "gpu" for d in jax.devices())
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none found")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def strict_numerics():
    """Raise on implicit rank promotion and on implicit dtype promotion (as equinox's tests)."""
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def float64():
    """Enable float64 for the duration of a test (for finite-difference gradient checks)."""
    with jax.enable_x64(True):
        yield
