"""Benchmark: answer generation by the FiD reader, cached (``FiDReader.generate``: incremental
decoding, memory keys/values computed once) against uncached (every step reruns the whole
decoder over the answer buffer, as generation did before the cache), same model, same run.

    python -m benchmarks.generation --out benchmarks/results/2026-11-26/generation_cpu_tiny.json

Both variants stop once every answer has ended, run from the same encoded memory under the
same hard top-k mask and produce the same tokens (checked); tokens/s counts the positions
decoded (questions x decoding steps), answers/s the questions answered. Encoding is not
timed.

``--torch`` adds the peer users compare with: transformers' PyTorch
``T5ForConditionalGeneration.generate`` (greedy, its key/value cache, SDPA attention, under
``inference_mode``) on the same weights (exported with ``checkpoints.export.t5_to_tensors``),
the same encoder outputs and the same top-k selection, given as its attention mask over the
concatenated passages (FiD's decoding). Its tokens are compared with ours.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from gumbel_jax import ops
from gumbel_jax.models import FiDReader, shift_right
from gumbel_jax.training.factory import build_models


def uncached_greedy(reader: FiDReader, memory, doc_log_mask, *, max_length: int):
    """Greedy decoding without a cache: at every step the decoder reruns on the whole
    ``max_length`` buffer (the causal mask makes later positions irrelevant)."""
    config = reader.config
    batch = memory.batch_size

    def unfinished(state):
        position, _, done = state
        return (position < max_length) & ~jnp.all(done)

    def advance(state):
        position, tokens, done = state
        inputs = shift_right(tokens, config.decoder_start_token_id)
        hidden = reader.t5.decode_hidden(inputs, memory.states, memory.valid, doc_log_mask,
                                         method=reader.method)
        logits = reader.t5.lm_logits(jax.lax.dynamic_index_in_dim(hidden, position, 1, False))
        chosen = jnp.where(done, config.pad_token_id,
                           jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position, axis=1)
        return position + 1, tokens, done | (chosen == config.eos_token_id)

    state = (jnp.int32(0), jnp.full((batch, max_length), config.pad_token_id, jnp.int32),
             jnp.zeros((batch,), bool))
    return jax.lax.while_loop(unfinished, advance, state)[1]


def decoding_steps(tokens: np.ndarray, eos_id: int) -> int:
    """Steps the loop ran: up to the last answer's EOS, or ``max_length``."""
    ends = [np.flatnonzero(row == eos_id) for row in tokens]
    if any(len(end) == 0 for end in ends):
        return tokens.shape[1]
    return int(max(end[0] for end in ends)) + 1


def interleaved_seconds(fns: dict, *, rounds: int) -> dict:
    """Median and min seconds per call of each function, timed in alternation (one call of
    each per round) so that load from other processes falls on all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: {"step_s_median": float(np.median(t)), "step_s_min": float(np.min(t)),
                   "steps": rounds} for name, t in times.items()}


def torch_greedy(reader: FiDReader, memory, key_mask, *, max_length: int):
    """transformers' cached greedy ``generate`` on our reader's weights: a function of no
    arguments returning ``[batch, max_length]`` int32 answers (pad after EOS, as ours).

    ``key_mask``: ``[batch, docs * doc_len]`` boolean, the passage tokens the decoder reads
    (real tokens of the selected documents)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from benchmarks.torch_reference import torch_t5_from_ours

    model = torch_t5_from_ours(reader.t5)
    device, dtype = model.device, model.dtype
    states = torch.from_numpy(np.asarray(memory.states, np.float32)).to(device, dtype)
    mask = torch.from_numpy(np.asarray(key_mask)).to(device).long()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode():
            out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                                 attention_mask=mask, max_new_tokens=max_length,
                                 do_sample=False, num_beams=1, use_cache=True)
        sync()
        tokens = out[:, 1:].cpu().numpy().astype(np.int32)  # drop the start token
        answers = np.full((tokens.shape[0], max_length), reader.config.pad_token_id, np.int32)
        answers[:, :tokens.shape[1]] = tokens
        return answers

    return call


def time_length(reader, memory, log_mask, args, max_length: int, key_mask=None) -> dict:
    """Every variant at one ``max_length``: compiled and checked first, then timed."""
    variants = {
        "cached_greedy": nnx.jit(lambda r, m, g: r.generate(m, g, max_length=max_length)),
        "uncached_greedy": nnx.jit(lambda r, m, g: uncached_greedy(r, m, g,
                                                                   max_length=max_length)),
    }
    if args.num_beams > 1:
        variants[f"cached_beam{args.num_beams}"] = nnx.jit(lambda r, m, g: r.generate(
            m, g, max_length=max_length, num_beams=args.num_beams))
    calls = {name: (lambda fn=fn: fn(reader, memory, log_mask)) for name, fn in variants.items()}
    if key_mask is not None:
        calls["transformers_greedy"] = torch_greedy(reader, memory, key_mask,
                                                    max_length=max_length)
    outputs, result = {}, {"variants": {}}
    for name, call in calls.items():
        start = time.perf_counter()
        outputs[name] = np.asarray(call())
        result["variants"][name] = {"first_call_s": time.perf_counter() - start}
        for _ in range(args.warmup):
            jax.block_until_ready(call())
    timings = interleaved_seconds(calls, rounds=args.steps)
    for name, timing in timings.items():
        steps = decoding_steps(outputs[name], reader.config.eos_token_id)
        result["variants"][name].update(timing, decoding_steps=steps,
                                        tokens_per_s=args.batch * steps
                                        / timing["step_s_median"],
                                        answers_per_s=args.batch / timing["step_s_median"])
    # Equal in float32; bfloat16 may flip near-ties (the two sum in different orders).
    result["cached_equals_uncached"] = bool(np.array_equal(outputs["cached_greedy"],
                                                           outputs["uncached_greedy"]))
    if key_mask is not None:
        ours, theirs = outputs["cached_greedy"], outputs["transformers_greedy"]
        result["transformers_equals_cached"] = bool(np.array_equal(ours, theirs))
        result["transformers_same_answers"] = int((ours == theirs).all(axis=1).sum())
        result["speedup_cached_over_transformers"] = (
            result["variants"]["cached_greedy"]["answers_per_s"]
            / result["variants"]["transformers_greedy"]["answers_per_s"])
    result["speedup_cached_over_uncached"] = (
        result["variants"]["cached_greedy"]["tokens_per_s"]
        / result["variants"]["uncached_greedy"]["tokens_per_s"])
    return result


def run(args) -> dict:
    """Time every variant on the trainer's reader (``training.factory.build_models``)."""
    settings = common.model_settings(args)
    reader, _ = build_models(common.model_config(args.size, **settings),
                             vocab_size=common.TINY_VOCAB, seed=0)
    config = reader.config
    rng = np.random.default_rng(0)
    shape = common.Shape(args.batch, args.docs, args.doc_len, max(args.max_length), args.k)
    batch = common.synthetic_batch(rng, shape, config.vocab_size)
    scores = jnp.asarray(rng.normal(size=(args.batch, args.docs)), jnp.float32)
    hard = ops.topk_mask(scores, args.k, where=jnp.asarray(batch["doc_valid"]))
    memory = nnx.jit(lambda r, i, m: r.encode(i, m))(reader, jnp.asarray(batch["reader_ids"]),
                                                     jnp.asarray(batch["reader_mask"]))
    report = {"benchmark": "generation", "device": common.device_description(),
              "size": args.size, "shape": {"batch": args.batch, "docs": args.docs,
                                           "doc_len": args.doc_len, "k": args.k},
              "model": {"d_model": config.d_model, "decoder_layers": config.num_decoder_layers,
                        "heads": config.num_heads, "vocab": config.vocab_size, **settings},
              "max_length": {}}
    key_mask = None
    if args.torch:
        selected = np.repeat(np.asarray(hard) > 0, args.doc_len, axis=1)
        key_mask = selected & np.asarray(batch["reader_mask"], bool).reshape(args.batch, -1)
        import torch
        report["torch"] = torch.__version__
    for max_length in args.max_length:
        report["max_length"][str(max_length)] = time_length(
            reader, memory, ops.mask_to_log_mask(hard), args, max_length, key_mask)
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["paper", "tiny"], default="tiny")
    common.add_model_arguments(p)
    p.set_defaults(dtype="float32")  # CPUs compute bfloat16 slowly
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--doc_len", type=int, default=None)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max_length", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--num_beams", type=int, default=4, help="also time cached beam search")
    p.add_argument("--torch", action="store_true",
                   help="also time transformers' PyTorch generate (greedy, cached) on the "
                        "same weights and encoder outputs")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed rounds")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    paper = args.size == "paper"
    args.batch = args.batch or (32 if paper else 8)
    args.docs = args.docs or (10 if paper else 10)
    args.doc_len = args.doc_len or (256 if paper else 32)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
