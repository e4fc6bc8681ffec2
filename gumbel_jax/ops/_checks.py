"""Argument checks shared by the ops: run at trace time, raise ValueError with a clear message."""

from __future__ import annotations

import jax.numpy as jnp


def mask_value(dtype) -> float:
    """The finite stand-in for log(0) used for invalid candidates and padded keys.

    Half of the most negative finite number of ``dtype``: adding two such values, or one to
    any ordinary logit, stays finite, so softmax and log-sum-exp never see -inf or NaN.
    """
    return float(jnp.finfo(dtype).min) / 2


def check_candidates(scores, where, *, name: str = "scores") -> None:
    """Candidates lie along the last axis; ``where`` (if given) must have the same shape."""
    if jnp.ndim(scores) < 1:
        raise ValueError(f"{name} must have at least one axis (candidates), got a scalar")
    if not jnp.issubdtype(jnp.result_type(scores), jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {jnp.result_type(scores)}")
    if where is not None and jnp.shape(where) != jnp.shape(scores):
        raise ValueError(
            f"where must have the shape of {name}: expected {jnp.shape(scores)}, "
            f"got {jnp.shape(where)}"
        )


def check_k(k, num_candidates: int, *, allow_more: bool = True) -> None:
    """``k`` is a static positive int; some ops also need ``k <= num_candidates``."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be a Python int (it fixes output shapes), got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not allow_more and k > num_candidates:
        raise ValueError(f"k={k} exceeds the number of candidates ({num_candidates})")


def check_positive(value, name: str) -> None:
    """Concrete temperatures must be > 0; traced values cannot be checked and pass through."""
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def compute_dtype(x):
    """float32, or wider when the input is wider (float64 gradient checks stay float64)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def valid_or_all(scores, where):
    """Boolean validity mask with the shape of ``scores``."""
    if where is None:
        return jnp.ones(jnp.shape(scores), dtype=bool)
    return jnp.asarray(where, dtype=bool)
