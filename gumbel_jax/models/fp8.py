"""FP8 (e4m3) matrix products for a frozen encoder (issue 17's FP8 lever).

A frozen reader's encoder runs forward only, so its matrix products can read 8-bit operands:
each weight matrix is stored once in ``float8_e4m3fn`` with one scale, and each activation is
quantized with one scale computed from its own absolute maximum at the call ("current
scaling"). Scales are powers of two, exact in every float format, so the dequantizing
multiply in the compute dtype undoes the quantizing division exactly. The product is written
as dequantize-then-dot in the compute dtype, the form XLA's GPU compiler rewrites into one FP8
GEMM with both scales folded in (cuBLASLt on Hopper and later, which take one scale per
operand: a per-row scale would not fuse). The kernel is stored ``[out, in]``, contiguous along
the contracted dimension as the FP8 GEMM reads both operands, so no transpose runs per step.

What runs where: on a CPU the program multiplies the dequantized values in the compute dtype
(XLA's CPU backend accumulates bf16 products in float32). On a GPU, cuBLASLt multiplies the
e4m3 operands and, at the default precision, uses its fast accumulation (as Transformer Engine
does for forward GEMMs), which rounds partial sums more coarsely: a CPU measurement of
accuracy does not include that rounding.

What it costs in accuracy: e4m3 keeps 3 mantissa bits (a relative rounding error of at most
2**-4) and about 2**17 of range below the tensor's absolute maximum, so one outlier coarsens a
whole tensor. The activation scale is the whole batch's, so a question's encoding depends (at
this rounding) on the other questions of its batch; with ``token_capacity`` packing, the
padded fallback's maximum also sees the padding tokens' states, so the two paths round
differently. ``experiments/demo_fp8_reader.py`` measures the reader's EM with and without it;
docs/performance.md has the numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.layers import upcast

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = float(jnp.finfo(E4M3).max)  # 448


def tensor_scale(x):
    """One float32 scale for the whole of ``x``: the smallest power of two at least
    ``max |x| / 448``, so the largest entry maps into (224, 448], e4m3's top binade; 1 for an
    all-zero ``x`` (no division by zero). A power of two is exact in bf16 too, so the
    dequantizing multiply (in the compute dtype) undoes the division exactly."""
    amax = jnp.max(jnp.abs(upcast(x)))
    # Clipped: an amax / 448 that flushes to zero (log2: -inf) must not give a scale of 0
    # (0 / 0 = NaN); 2**-100 .. 2**100 is far wider than any activation or weight.
    exponent = jnp.clip(jnp.ceil(jnp.log2(amax / E4M3_MAX)), -100, 100)
    return jnp.where(amax > 0, jnp.exp2(exponent), 1.0).astype(jnp.float32)


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
      kernel: ``[out, in]`` e4m3, the original kernel transposed (an ``nnx.Param`` whose
        logical axes are the original's, reversed, so it shards as before).
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
        metadata = dict(linear.kernel.get_metadata())
        if metadata.get("out_sharding"):
            metadata["out_sharding"] = tuple(reversed(metadata["out_sharding"]))
        kernel = nnx.Param(quantize(weights.T, scale), **metadata)
        return cls(kernel, nnx.Param(scale), linear.bias, linear.dtype or weights.dtype)

    def __call__(self, x):
        """``x [..., in]`` -> ``[..., out]`` in ``dtype``; ``x``'s scale is its own max."""
        if self.kernel[...].dtype != E4M3:  # e.g. cast back by a dtype pass: no FP8 left
            raise TypeError(f"Fp8Linear's kernel is {self.kernel[...].dtype}, not e4m3")
        x_scale = tensor_scale(x)
        x = dequantize(quantize(x, x_scale), x_scale, self.dtype)
        kernel = dequantize(self.kernel[...], self.kernel_scale[...], self.dtype)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (1,)), ((), ())))
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
