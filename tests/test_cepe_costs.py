"""The CEPE step's cost estimate (experiments.costs): parameters by hand equal the model's,
and the step's FLOPs and memory are cepe.md's estimate at its shape."""

import pytest
from flax import nnx

from experiments import costs
from gumbel_jax.models.cepe import CepeConfig, CepeReader
from gumbel_jax.models.llama import LlamaConfig
from gumbel_jax.models.presets import CEPE_LLAMA_2_7B, PUBLIC_PARAMETER_COUNTS, T5_V1_1_BASE
from gumbel_jax.training.factory import parameter_count


def test_parameter_count_by_hand_equals_the_models():
    assert costs.cepe_parameter_count(CEPE_LLAMA_2_7B) == PUBLIC_PARAMETER_COUNTS[
        "cepe-llama-2-7b"] == 8_516_196_352
    # Grouped key/value heads and cross-attention in the last layer only.
    tiny = CepeConfig(decoder=LlamaConfig(vocab_size=50, hidden_size=24, intermediate_size=40,
                                          num_hidden_layers=3, num_attention_heads=4,
                                          num_key_value_heads=2),
                      encoder=LlamaConfig(vocab_size=51, hidden_size=8, intermediate_size=12,
                                          num_hidden_layers=2, num_attention_heads=2),
                      num_cross_attn_layers=1)
    model = nnx.eval_shape(lambda: CepeReader.random(tiny))
    assert costs.cepe_parameter_count(tiny) == parameter_count(model)


def test_step_cost_is_cepe_md_estimate():
    """cepe.md: encoder 17, memory k/v 11, RankT5 ~13 TFLOP; about 66 TFLOP per step at batch
    8 x 10 x 256 (about 110 at 20 contexts); 17 GB of bf16 weights, about 11 GB of memory
    keys/values, 42 MB of encoder states."""
    flops = costs.cepe_step_flops(CEPE_LLAMA_2_7B, T5_V1_1_BASE)
    assert flops["encoder_fwd"] / 1e12 == pytest.approx(17.0, abs=0.5)
    assert flops["memory_kv"] / 1e12 == pytest.approx(11.0, abs=0.5)
    assert flops["reranker_fwd_bwd"] / 1e12 == pytest.approx(13.0, abs=1.0)
    assert flops["total"] / 1e12 == pytest.approx(66.0, rel=0.05)
    twenty = costs.cepe_step_flops(CEPE_LLAMA_2_7B, T5_V1_1_BASE, docs=20)
    assert twenty["total"] / 1e12 == pytest.approx(110.0, rel=0.05)
    memory = costs.cepe_memory_bytes(CEPE_LLAMA_2_7B)
    assert memory["weights"] / 1e9 == pytest.approx(17.0, abs=0.1)
    assert memory["memory_kv"] / 1e9 == pytest.approx(10.7, abs=0.1)
    assert memory["encoder_states"] / 1e6 == pytest.approx(42, abs=1)
    assert "| 8 x 10 x 256 |" in costs.cepe_markdown()
