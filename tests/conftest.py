"""Shared test set-up: 8 host devices, a per-run compilation cache, strict numerics, the GPU
marker, float64 for gradient checks."""

from __future__ import annotations

import os
import shutil
import tempfile

# XLA flags of the test processes (and of their subprocesses, which inherit them), set before
# jax is imported. Appended, not setdefault: a user's own XLA_FLAGS must not silently skip the
# 8-device tests.
# - 8 host devices: the sharding tests create their meshes on the host.
# - LLVM at -O0: the tests' tiny models spend most of their time compiling, not running, and
#   XLA's backend optimisation level 0 compiles about 40% faster (the tiny demo: 21.7 s ->
#   12.7 s of compiling). The operations are the same; only the machine code's speed, and
#   where a multiply-add is fused, may differ. The demo's claim test trains the demo's reader
#   (10,000 steps, which -O0 would slow) and measures what `make demo` does, so it runs in a
#   subprocess without these flags, as `make demo` runs (test_demo_claim.py).
TEST_XLA_FLAGS = {"--xla_force_host_platform_device_count": "8",
                  "--xla_backend_optimization_level": "0"}
for _flag, _value in TEST_XLA_FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()

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


# The longest test files, longest first (seconds of one `make test` worker, measured on 2
# cores; docs/testing.md). pytest-xdist hands whole files to its workers in collection order
# (`--dist loadfile --no-loadscope-reorder`, Makefile), so these start first and the short
# files fill in at the end: neither core waits on one long file while the other is idle.
# A file not listed runs after these, in pytest's order.
LONGEST_FILES = (
    "tests/test_demo_claim.py",  # trains the demo's reader 10,000 steps since issue 14
    "tests/test_paper_grid.py",
    "tests/test_demo.py",
    "tests/training/test_loop.py",
    "tests/test_readme.py",
    "tests/training/test_train_reader.py",
    "tests/training/test_multiprocess.py",
    "tests/test_rerank.py",
    "tests/test_sharding.py",  # three packed / FP8 training runs on 8 devices since issue 17
    "tests/benchmarks/test_benchmarks_tiny.py",
    "tests/models/test_generation.py",
    "tests/models/test_fid.py",
    "tests/models/test_cepe.py",
    "tests/test_objectives.py",
    "tests/test_demo_float_path.py",
    "tests/training/test_factory.py",
    "tests/checkpoints/test_export.py",
)


def _file_rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_file_rank)  # stable: a file's tests keep their order
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
