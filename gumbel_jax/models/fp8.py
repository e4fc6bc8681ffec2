"""FP8 (e4m3) matrix products for a frozen encoder (issue 17's FP8 lever).

A frozen reader's encoder runs forward only, so its matrix products can read 8-bit operands:
each weight matrix is stored once in ``float8_e4m3fn`` with one float32 scale, and each
activation is quantized with one scale computed from its own absolute maximum at the call
("current scaling"). The product is written as dequantize-then-dot in the compute dtype,
the form XLA's GPU compiler rewrites into one FP8 GEMM with both scales folded in (cuBLASLt
on Hopper and later, which take one scale per operand: a per-row scale would not fuse). On a
CPU the same program runs as a dot of the dequantized values, so it computes the numbers an
FP8 GEMM with float32 accumulation computes, up to the order of the sums.

What it costs in accuracy: e4m3 keeps 3 mantissa bits (a relative rounding error of at most
2**-4) and a dynamic range of about 2**17 below the tensor's absolute maximum, so one outlier
coarsens a whole tensor. The activation scale is the whole batch's, so a question's encoding
depends (at this rounding) on the other questions of its batch. ``benchmarks/fp8_reader.py``
measures the reader's EM with and without it; docs/performance.md has the numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.layers import upcast

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = float(jnp.finfo(E4M3).max)  # 448


def tensor_scale(x):
    """One float32 scale for the whole of ``x``: ``max |x| / 448``, so the largest entry
    maps to e4m3's largest finite value; 1 for an all-zero ``x`` (no division by zero)."""
    amax = jnp.max(jnp.abs(upcast(x)))
    return jnp.where(amax > 0, amax / E4M3_MAX, 1.0).astype(jnp.float32)


def quantize(x, scale):
    """``x / scale`` rounded to e4m3 (clipped first: e4m3fn has no infinity, an overflow
    would be NaN)."""
    return jnp.clip(upcast(x) / scale, -E4M3_MAX, E4M3_MAX).astype(E4M3)


def dequantize(q, scale, dtype):
    """``q * scale`` in ``dtype``: the convert-and-multiply XLA folds into an FP8 GEMM."""
    return q.astype(dtype) * jnp.asarray(scale, dtype)


class Fp8Linear(nnx.Module):
    """A frozen ``nnx.Linear`` whose products read e4m3 operands.

    Attributes:
      kernel: ``[in, out]`` e4m3 (an ``nnx.Param`` with the original kernel's metadata, so it
        shards by the same logical axes).
      kernel_scale: float32 scalar; ``kernel * kernel_scale`` approximates the original.
      bias: the original bias (compute dtype) or None.
      dtype: the compute dtype of the product and the output.
    """

    def __init__(self, kernel: nnx.Param, kernel_scale: nnx.Param, bias, dtype):
        self.kernel, self.kernel_scale, self.bias, self.dtype = kernel, kernel_scale, bias, dtype

    @classmethod
    def from_linear(cls, linear: nnx.Linear) -> Fp8Linear:
        """Quantize ``linear``'s kernel with one scale for the whole matrix."""
        weights = linear.kernel[...]
        scale = tensor_scale(weights)
        kernel = nnx.Param(quantize(weights, scale), **linear.kernel.get_metadata())
        bias = None if linear.bias is None else linear.bias
        return cls(kernel, nnx.Param(scale), bias, linear.dtype or weights.dtype)

    def __call__(self, x):
        """``x [..., in]`` -> ``[..., out]`` in ``dtype``; ``x``'s scale is its own max."""
        x_scale = tensor_scale(x)
        x = dequantize(quantize(x, x_scale), x_scale, self.dtype)
        kernel = dequantize(self.kernel[...], self.kernel_scale[...], self.dtype)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def quantize_linears(module: nnx.Module) -> int:
    """Replace every ``nnx.Linear`` inside ``module`` (in place) by an :class:`Fp8Linear`.
    Returns how many were replaced. Meant for frozen modules: nothing trains an e4m3 kernel."""
    count = 0
    for name, value in list(vars(module).items()):
        children = value if isinstance(value, (list, nnx.List)) else [value]
        for index, child in enumerate(children):
            if isinstance(child, nnx.Linear):
                replacement = Fp8Linear.from_linear(child)
                if children is value:
                    value[index] = replacement
                else:
                    setattr(module, name, replacement)
                count += 1
            elif isinstance(child, nnx.Module):
                count += quantize_linears(child)
    return count
