"""FP8 (e4m3) matrix products in the frozen reader's encoder (issue 17's FP8 lever): the
rounding against a float64 numpy reference built on ml_dtypes' e4m3, the scales, and the
reader with its encoder quantized (encoder only, close to the unquantized reader)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.models import FiDReader
from gumbel_jax.models.fp8 import (
    E4M3,
    Fp8Linear,
    dequantize,
    quantize,
    quantize_linears,
    tensor_scale,
)
from gumbel_jax.models.layers import dense
from gumbel_jax.training.config import ModelConfig
from gumbel_jax.training.factory import build_models, build_trainable_reader
from tests.models.conftest import TINY_T5


def _reference_qdq(x: np.ndarray) -> np.ndarray:
    """e4m3 round trip with one scale, in numpy: the scale is the smallest power of two at
    least max|x| / 448, ``x / scale`` is formed in float32 (as the model forms it), the
    rounding is ml_dtypes' (round to nearest even)."""
    x32 = x.astype(np.float32)
    amax = float(np.max(np.abs(x32)))
    scale = np.float32(2.0 ** np.ceil(np.log2(amax / 448.0))) if amax > 0 else np.float32(1)
    q = np.clip(x32 / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    return q.astype(np.float64) * np.float64(scale)


def test_scale_is_a_power_of_two_and_rounding_is_within_half_an_ulp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 48)).astype(np.float32) * 3.0
    scale = tensor_scale(jnp.asarray(x))
    assert float(scale) == 2.0 ** round(np.log2(float(scale)))  # exact in bf16 too
    q = quantize(jnp.asarray(x), scale)
    assert q.dtype == E4M3
    assert 224.0 < float(jnp.max(jnp.abs(q.astype(jnp.float32)))) <= 448.0  # the top binade
    back = np.asarray(dequantize(q, scale, jnp.float32), np.float64)
    np.testing.assert_allclose(back, _reference_qdq(x), rtol=1e-6, atol=0)
    # bf16 dequantization gives the same numbers: e4m3 values times a power of two fit bf16.
    np.testing.assert_array_equal(np.asarray(dequantize(q, scale, jnp.bfloat16), np.float64),
                                  back)
    # e4m3 keeps 3 mantissa bits: at normal magnitudes (>= 2**-6 of the scale unit) a value
    # moves by at most half an ulp, 2**-4 of itself.
    normal = np.abs(x) >= float(scale) * 2.0**-6
    relative = np.abs(back - x)[normal] / np.abs(x)[normal]
    assert relative.max() <= 2.0**-4
    assert relative.max() > 2.0**-6  # it does round: 3 bits, not 8 or 24


def test_zeros_and_out_of_range_values_stay_finite():
    zeros = jnp.zeros((3, 4), jnp.bfloat16)
    assert float(tensor_scale(zeros)) == 1.0
    np.testing.assert_array_equal(dequantize(quantize(zeros, tensor_scale(zeros)), 1.0,
                                             jnp.float32), 0.0)
    # A tensor so small that max / 448 would flush to zero still gets a usable scale.
    tiny = jnp.array([1e-37, 0.0, -1e-37])
    back = dequantize(quantize(tiny, tensor_scale(tiny)), tensor_scale(tiny), jnp.float32)
    assert float(tensor_scale(tiny)) > 0 and np.isfinite(np.asarray(back)).all()
    # A scale too small for the values (another tensor's): clipped to +-448, never NaN
    # (e4m3fn has no infinity).
    q = quantize(jnp.array([1e6, -1e6, 1.0]), jnp.float32(1.0))
    np.testing.assert_array_equal(q.astype(jnp.float32), [448.0, -448.0, 1.0])


@pytest.mark.parametrize("use_bias", [False, True])
def test_fp8_linear_equals_a_float64_reference_and_differs_from_the_float_layer(use_bias):
    rng = np.random.default_rng(1)
    linear = dense(48, 40, nnx.Rngs(0), use_bias=use_bias, axes=("embed", "mlp"))
    if use_bias:
        linear.bias[...] = jnp.asarray(rng.standard_normal(40), jnp.float32)
    x = rng.standard_normal((3, 7, 48)).astype(np.float32)
    x[0, 0, 0] = 25.0  # an outlier: it sets the activation scale
    fp8 = Fp8Linear.from_linear(linear)
    assert fp8.kernel[...].dtype == E4M3 and fp8.kernel_scale[...].shape == ()
    # Stored [out, in] (contiguous along the contraction, as FP8 GEMMs read it), its
    # logical axes reversed with it: it shards as before.
    assert fp8.kernel[...].shape == (40, 48)
    assert fp8.kernel.get_metadata()["out_sharding"] == ("mlp", "embed")

    weights = np.asarray(linear.kernel[...])
    expected = _reference_qdq(x) @ _reference_qdq(weights)
    if use_bias:
        expected = expected + np.asarray(linear.bias[...], np.float64)
    got = np.asarray(fp8(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    exact = x.astype(np.float64) @ weights + (np.asarray(linear.bias[...]) if use_bias else 0)
    error = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert 1e-3 < error < 0.1, error  # e4m3-sized: quantized, but still the same layer


def test_fp8_linear_in_bfloat16_loses_only_the_output_rounding():
    """In bf16 compute (the trainer's accelerator dtype) the dequantized operands are exact
    (power-of-two scales), so the result is the float64 reference up to bf16's rounding of
    the output, 2**-9 relative, and no systematic scale error."""
    rng = np.random.default_rng(2)
    linear = dense(64, 32, nnx.Rngs(1), dtype=jnp.bfloat16)
    # The activation arrives in bf16 (rounded there first: the reference rounds it too).
    x = rng.standard_normal((16, 64)).astype(ml_dtypes.bfloat16).astype(np.float32)
    expected = _reference_qdq(x) @ _reference_qdq(np.asarray(linear.kernel[...]))
    got = np.asarray(Fp8Linear.from_linear(linear)(jnp.asarray(x, jnp.bfloat16)), np.float64)
    assert got.dtype == np.float64 and np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=2.0**-8, atol=2.0**-8 * np.abs(expected).max())
    mean_error = np.mean(got - expected) / np.abs(expected).mean()
    assert abs(mean_error) < 2.0**-10, mean_error  # unbiased: rounding, not a scale error


def test_a_cast_does_not_undo_the_e4m3_kernels_and_a_cast_kernel_is_refused():
    from gumbel_jax.training.factory import store_frozen_weights_in_compute_dtype

    reader, _ = build_models(_tiny_config(reader_fp8=True, dtype="bfloat16"), vocab_size=64)
    store_frozen_weights_in_compute_dtype(reader, jnp.bfloat16)
    layer = reader.t5.encoder.layers[0].self_attention.q
    assert layer.kernel[...].dtype == E4M3
    layer.kernel = nnx.Param(layer.kernel[...].astype(jnp.bfloat16))
    with pytest.raises(TypeError, match="Fp8Linear's kernel is bfloat16, not e4m3"):
        layer(jnp.ones((2, layer.kernel[...].shape[1]), jnp.bfloat16))


def _tiny_config(**overrides):
    return ModelConfig(score_token_id=3, **overrides)


def test_factory_quantizes_the_frozen_reader_encoder_only():
    reader, ranker = build_models(_tiny_config(reader_fp8=True), vocab_size=64)
    encoder_linears = [m for _, m in nnx.iter_graph(reader.t5.encoder)
                       if isinstance(m, (nnx.Linear, Fp8Linear))]
    assert encoder_linears and all(isinstance(m, Fp8Linear) for m in encoder_linears)
    assert len(encoder_linears) == reader.config.num_layers * (4 + 2)  # q k v o, wi wo
    for module in (reader.t5.decoder, ranker):
        assert not any(isinstance(m, Fp8Linear) for _, m in nnx.iter_graph(module))
    # The abstract build (shapes for lowering, costs) has the same e4m3 kernels.
    abstract, _ = build_models(_tiny_config(reader_fp8=True), vocab_size=64, abstract=True)
    assert abstract.t5.encoder.layers[0].mlp.wo.kernel.get_value().dtype == E4M3


def test_reader_fp8_is_refused_where_there_is_no_frozen_fid_encoder():
    with pytest.raises(ValueError, match="model.reader_fp8 quantizes a FiD reader's encoder"):
        build_models(_tiny_config(reader_fp8=True, reader_kind="cepe"), vocab_size=64)
    with pytest.raises(ValueError, match="a reader that trains keeps its weights"):
        build_trainable_reader(_tiny_config(reader_fp8=True), vocab_size=64)


def test_quantized_reader_stays_close_and_its_mask_gradient_too(fid_batch):
    """The same reader with and without its encoder in e4m3: answer log-probabilities and
    the gradient to the document mask (what G-Rerank learns from) agree to e4m3's
    precision."""
    input_ids, attention_mask, answer_ids, answer_mask = fid_batch
    config = dataclasses.replace(TINY_T5, dropout_rate=0.0)
    plain = FiDReader.random(config, seed=0)
    quantized = FiDReader.random(config, seed=0)
    assert quantize_linears(quantized.t5.encoder) == 2 * (4 + 3)  # q k v o, wi_0 wi_1 wo

    def loss_and_mask_grad(reader, log_mask):
        memory = reader.encode(input_ids, attention_mask)

        def loss(log_mask):
            return -jnp.sum(reader.token_log_probs(memory, answer_ids, answer_mask, log_mask))

        return jax.value_and_grad(loss)(log_mask)

    log_mask = jnp.log(jnp.array([[1.0, 0.9, 0.5, 0.2, 0.7], [1.0, 0.3, 0.8, 1.0, 1.0]]))
    loss_plain, grad_plain = loss_and_mask_grad(plain, log_mask)
    loss_fp8, grad_fp8 = loss_and_mask_grad(quantized, log_mask)
    assert loss_fp8 != loss_plain  # quantized
    np.testing.assert_allclose(loss_fp8, loss_plain, rtol=0.005)  # measured 1.2e-3 .. 3e-4
    # The mask gradient of a random tiny reader is small and moves by 4-11% (relative norm,
    # seeds 0-3); its direction, which the reranker follows, stays (cosine >= 0.99 there).
    grad_plain, grad_fp8 = np.ravel(grad_plain), np.ravel(grad_fp8)
    cosine = grad_plain @ grad_fp8 / np.linalg.norm(grad_plain) / np.linalg.norm(grad_fp8)
    assert cosine > 0.98, cosine
    assert np.linalg.norm(grad_fp8 - grad_plain) < 0.2 * np.linalg.norm(grad_plain)
