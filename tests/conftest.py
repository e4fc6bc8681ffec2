"""Shared test set-up: 8 host devices, a per-run compilation cache, strict numerics, the GPU
marker, float64 for gradient checks."""

from __future__ import annotations

import os
import shutil
import tempfile

# Tests that need several devices create them on the host; set before jax is imported.
# Appended, not setdefault: a user's own XLA_FLAGS must not silently skip the 8-device tests.
_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()

# JAX's persistent compilation cache, in a fresh folder per run: programs compiled again by
# another jit wrapper (resumed runs, the grid's cells, the CLI's subprocesses, which inherit
# these variables) are read back instead of recompiled. Fresh per run, so a test never
# depends on an earlier run's cache. Set as variables so subprocesses share it.
# The process that creates the folder owns it and removes it at the end. A process that
# inherits GUMBEL_JAX_TEST_CACHE_DIR uses that folder and leaves it: pytest-xdist's workers
# (started by the owning main process, so the workers share what either compiled) and
# `make mutation`'s mutant runs (one folder for all mutants, under mutants/).
_CACHE_VARIABLE = "GUMBEL_JAX_TEST_CACHE_DIR"
_OWNS_CACHE = not os.environ.get(_CACHE_VARIABLE)
if _OWNS_CACHE:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="gumbel-jax-test-xla-cache-")
_CACHE_DIR = os.environ[_CACHE_VARIABLE]
os.makedirs(_CACHE_DIR, exist_ok=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
    if _OWNS_CACHE:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)


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
