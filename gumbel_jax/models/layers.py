"""Small building blocks shared by the T5 and BERT families."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def upcast(x):
    """``x`` in float32, or float64 if it already is (float64 gradient checks stay exact)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class RMSNorm(nnx.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        x32 = upcast(x)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (self.scale[...] * (x32 * jax.lax.rsqrt(variance + self.eps))).astype(self.dtype)


class LayerNorm(nnx.Module):
    """BERT's layer norm with statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-12, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x):
        x32 = upcast(x)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(variance + self.eps)
        return (normed * self.scale[...] + self.bias[...]).astype(self.dtype)


def logical(init, axes: tuple | None):
    """Attach logical axis names (``gumbel_jax.sharding.PARAMETER_RULES`` maps them to the
    mesh) without sharding at creation, so models build the same with or without a mesh."""
    if axes is None:
        return init
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def dense(in_features: int, out_features: int, rngs: nnx.Rngs, *, use_bias: bool = False,
          dtype=jnp.float32, std: float | None = None, axes: tuple | None = None
          ) -> nnx.Linear:
    """A Linear layer computing in ``dtype`` with float32 parameters; ``axes`` names the
    kernel's (in, out) logical axes."""
    init = jax.nn.initializers.normal(std if std is not None else in_features**-0.5)
    return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype,
                      param_dtype=jnp.float32, kernel_init=logical(init, axes), rngs=rngs)


def embedding(num: int, features: int, rngs: nnx.Rngs, *, dtype=jnp.float32, std: float,
              axes: tuple | None = None) -> nnx.Embed:
    return nnx.Embed(num, features, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
                     embedding_init=logical(jax.nn.initializers.normal(std), axes))


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    """Activation by its Hugging Face name; a clear error for unknown names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def dropout(key, x, *, rate: float):
    r"""Inverted dropout: each element of ``x`` is zeroed with probability ``rate`` and the
    others are divided by ``1 - rate``, so the expectation is ``x``.

    Args:
      key: a PRNG key, or None for no dropout (the evaluation and frozen forward: ``x`` is
        returned as is, no operation traced).
      x: any shape; the mask has its shape.
      rate: the drop probability, in ``[0, 1)``; 0 returns ``x`` as is.

    Returns:
      An array of ``x``'s shape and dtype.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def fold_key(key, data: int):
    """``fold_in(key, data)``, or None for None: the key of one dropout site (a layer, a
    sublayer), derived by position rather than split order."""
    return None if key is None else jax.random.fold_in(key, data)


def remat_call(fn):
    """``fn(module, *arrays)`` recomputed in the backward pass (``jax.checkpoint``).

    The module is split into its graph and state and rebuilt inside the checkpointed pure
    function, so this works whether the module was passed through a transform or captured by
    a closure (``nnx.remat`` refuses the latter: it would update state across trace levels).
    """

    def wrapped(module, *args):
        graphdef, state = nnx.split(module)
        pure = jax.checkpoint(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
        return pure(state, *args)

    return wrapped
