"""Helpers for comparisons with transformers' PyTorch models (skipped when torch is absent)."""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("GUMBEL_JAX_REQUIRE_EQUIVALENCE") == "1":
    # CI (.ci/run): the comparisons with transformers' PyTorch models must run, so a
    # missing torch is an import error that fails the suite, not a silent skip.
    import torch
else:
    torch = pytest.importorskip("torch", reason="torch (test-only, Python 3.11) is not installed")


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().float().numpy().copy()
            for name, tensor in model.state_dict().items()}


def to_torch(array, dtype=None):
    tensor = torch.from_numpy(np.asarray(array).copy())
    return tensor if dtype is None else tensor.to(dtype)
