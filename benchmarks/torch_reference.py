"""Benchmark 2: the same G-Rerank step written with transformers' PyTorch T5, as a careful
PyTorch user would write it:

* the frozen reader in bfloat16, its encoder under ``no_grad`` with SDPA (PyTorch's fused
  attention); only the reader decoder keeps eager attention, because its cross-attention
  needs the gradient of the document mask and PyTorch's fused kernels cannot return it;
* the reranker in bfloat16 (a bfloat16 residual stream, as ours) with float32 master weights
  updated by a fused AdamW, SDPA attention;
* ``gelu_pytorch_tanh`` (PyTorch's fused tanh GELU) instead of transformers' Python
  ``gelu_new`` (the same function);
* eager, ``torch.compile`` of the whole step, and ``compile_blocks``: each transformer
  block compiled on its own (PyTorch's "regional compilation" recipe: the 24 identical
  blocks of a stack share one compiled graph, so compiling takes a fraction of the
  whole-step compile, which did not finish in 200 s at the paper shape on an H100). Compile
  times are reported.

    python -m benchmarks.torch_reference --size paper --batch 16 --out runs/bench/torch.json
    python -m benchmarks.torch_reference --check   # same weights, same noise: loss vs ours

``--check`` first proves both frameworks compute the same loss and the same gradient with
respect to the reranker scores on shared float32 weights (the same attention and activation
code paths as the timed run). An out-of-memory step is recorded in the report, not raised.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from benchmarks import common
from gumbel_jax.models import RANKT5_SCORE_TOKEN_ID
from gumbel_jax.training.factory import model_architectures


def _hf_config(config, transformers, attn_implementation):
    hf = transformers.T5Config(
        vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
        d_ff=config.d_ff, num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj=config.feed_forward_proj, dropout_rate=0.0,
        tie_word_embeddings=config.tie_word_embeddings, decoder_start_token_id=0)
    if hf.dense_act_fn == "gelu_new":
        # The same tanh GELU, as one fused PyTorch kernel instead of a chain of Python ops.
        hf.dense_act_fn = "gelu_pytorch_tanh"
    hf._attn_implementation = attn_implementation
    return hf


def _reader(config, transformers, *, device, dtype):
    """The frozen reader: SDPA in the encoder (forward only), eager attention in the decoder,
    whose cross-attention must return the document mask's gradient (SDPA's fused kernels
    cannot). transformers gives the encoder and decoder stacks their own config copies, so
    the two can differ."""
    model = transformers.T5ForConditionalGeneration(_hf_config(config, transformers, "eager"))
    model.encoder.config._attn_implementation = "sdpa"
    return model.to(device, dtype).eval().requires_grad_(False)


class MasterWeights:
    """A module computing in ``dtype`` whose float32 master copy a fused AdamW updates (the
    usual bf16 mixed-precision recipe: bf16 activations and residual stream, fp32 update)."""

    def __init__(self, module, *, dtype, fused: bool, lr: float = 1e-5):
        import torch

        self.torch = torch
        self.master = [p.detach().float().clone() for p in module.parameters()]
        self.module = module.to(dtype)
        self.params = list(module.parameters())
        self.separate = dtype != torch.float32
        self.optimizer = torch.optim.AdamW(self.master if self.separate else self.params,
                                           lr=lr, fused=fused)

    def step(self):
        torch = self.torch
        if self.separate:
            for master, param in zip(self.master, self.params, strict=True):
                master.grad = param.grad.float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.separate:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.master)
            for param in self.params:
                param.grad = None


class TorchGRerank:
    """Reader (frozen) + RankT5 reranker + AdamW in PyTorch; ``dtype`` is the compute dtype of
    both models (bfloat16 timed, float32 for the consistency check)."""

    def __init__(self, reader_cfg, ranker_cfg, *, device, dtype, score_token, k,
                 tau=0.5, kappa=1.0, seed=0):
        import torch
        import transformers

        torch.manual_seed(seed)
        self.torch, self.device, self.k, self.tau, self.kappa = torch, device, k, tau, kappa
        self.reader = _reader(reader_cfg, transformers, device=device, dtype=dtype)
        self.ranker = transformers.T5ForConditionalGeneration(
            _hf_config(ranker_cfg, transformers, "sdpa"))
        untie_head(self.ranker, ranker_cfg)  # RankT5's head is its own matrix, as in ours
        self.ranker = self.ranker.to(device).train()
        self.weights = MasterWeights(self.ranker, dtype=dtype, fused=device == "cuda")
        self.score_token = score_token
        self.reader_dtype = dtype

    def scores(self, ids, mask):
        return rankt5_scores(self.ranker, ids, mask, score_token=self.score_token)

    def log_mask(self, scores, noise, doc_valid):
        torch = self.torch
        neg = torch.finfo(torch.float32).min / 2
        perturbed = (self.kappa * scores[None] + noise) / self.tau
        perturbed = torch.where(doc_valid[None], perturbed, torch.full_like(perturbed, neg))
        log_mask = torch.log_softmax(perturbed, dim=-1).amax(0)
        return torch.where(doc_valid, log_mask, torch.full_like(log_mask, neg))

    def loss(self, batch, noise):
        torch = self.torch
        ids, mask = batch["reader_ids"], batch["reader_mask"]
        b, d, length = ids.shape
        scores = self.scores(batch["ranker_ids"], batch["ranker_mask"])
        with torch.no_grad():
            memory = self.reader.encoder(input_ids=ids.view(b * d, length),
                                         attention_mask=mask.view(b * d, length))[0]
            memory = memory.view(b, d * length, -1)
        log_mask = self.log_mask(scores, noise, batch["doc_valid"])
        neg = torch.finfo(self.reader_dtype).min / 2
        bias = log_mask.repeat_interleave(length, dim=1)
        bias = torch.where(mask.view(b, d * length), bias, torch.full_like(bias, neg))
        answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
        target_len = answers.shape[1]
        bias = bias[:, None, None, :].to(self.reader_dtype).expand(b, 1, target_len, d * length)
        decoder_inputs = torch.cat([torch.zeros_like(answers[:, :1]), answers[:, :-1]], dim=1)
        # use_cache=False: training needs no key/value cache, and building one makes every
        # decoder layer's compiled graph guard on its own cache slot (torch.compile
        # recompiled per layer and hit dynamo's recompile limit on the H100).
        logits = self.reader(encoder_outputs=(memory,), attention_mask=bias,
                             decoder_input_ids=decoder_inputs, use_cache=False).logits
        log_probs = torch.log_softmax(logits.float(), -1).gather(-1, answers[..., None])[..., 0]
        log_probs = torch.where(answer_mask, log_probs, torch.zeros_like(log_probs))
        per_question = log_probs.sum(-1) / answer_mask.sum(-1).clamp(min=1)
        return -per_question.mean(), scores

    def step(self, batch, noise):
        loss, _ = self.loss(batch, noise)
        loss.backward()
        self.weights.step()
        return loss.detach()


def rankt5_scores(ranker, ids, mask, *, score_token: int):
    """RankT5 with transformers' ``T5ForConditionalGeneration``: ``[..., len]`` token ids and
    attention mask -> ``[...]`` float32 scores, the first decoder step's logit of
    ``score_token`` (the output scaled by ``d_model ** -0.5`` when the head is tied, as
    transformers' T5 does before its head)."""
    import torch

    leading, length = ids.shape[:-1], ids.shape[-1]
    flat_ids, flat_mask = ids.reshape(-1, length), mask.reshape(-1, length)
    memory = ranker.encoder(input_ids=flat_ids, attention_mask=flat_mask)
    start = torch.full((flat_ids.shape[0], 1), ranker.config.decoder_start_token_id,
                       dtype=torch.long, device=ids.device)
    hidden = ranker.decoder(input_ids=start, encoder_hidden_states=memory[0],
                            encoder_attention_mask=flat_mask, use_cache=False)[0][:, 0]
    # transformers >= 5 keeps the scaling flag apart (it reports every T5 head as tied).
    tied = getattr(ranker.config, "scale_decoder_outputs", ranker.config.tie_word_embeddings)
    scale = ranker.config.d_model**-0.5 if tied else 1.0
    row = ranker.lm_head.weight[score_token]
    return ((hidden.float() * scale) @ row.float()).view(leading)


def untie_head(model, config) -> None:
    """Give an untied head (our ``config.tie_word_embeddings`` False: T5 v1.1, RankT5) its own
    parameter: transformers >= 5 ties T5's head to the embedding whatever the config says,
    which would train (and load) one matrix where the model has two."""
    import torch

    if not config.tie_word_embeddings and model.lm_head.weight is model.shared.weight:
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())


def torch_t5_from_ours(t5, *, attn_implementation: str = "sdpa"):
    """transformers' ``T5ForConditionalGeneration`` holding the weights of our ``t5``
    (``checkpoints.export.t5_to_tensors``), in its compute dtype, in eval mode, on the GPU
    when there is one (``model.device``)."""
    import torch
    import transformers

    from gumbel_jax.checkpoints.export import t5_config_to_hf, t5_to_tensors

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[str(np.dtype(
        t5.config.dtype))]
    config = transformers.T5Config(**t5_config_to_hf(t5.config))
    config._attn_implementation = attn_implementation
    model = transformers.T5ForConditionalGeneration(config)
    untie_head(model, t5.config)
    tensors = {name: torch.from_numpy(np.array(value, np.float32))
               for name, value in t5_to_tensors(t5).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # The export writes the shared embedding once; the stacks' copies (and a tied head)
    # are tied to it.
    tied_copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} | (
        {"lm_head.weight"} if t5.config.tie_word_embeddings else set())
    assert not unexpected and set(missing) <= tied_copies, (missing, unexpected)
    return model.to(device, dtype).eval()


def _to_torch(batch, torch, device):
    out = {}
    for name, value in batch.items():
        tensor = torch.from_numpy(np.array(value))  # a writable copy
        out[name] = (tensor.long() if tensor.dtype not in (torch.bool,) and
                     not tensor.is_floating_point() else tensor).to(device)
    return out


def consistency_check(device: str) -> dict:
    """Shared float32 weights and noise: the JAX and PyTorch losses and d(loss)/d(scores),
    both at full float32 matmul precision (no TF32)."""
    import jax
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with jax.default_matmul_precision("highest"):
        return _consistency_check(device)


def _consistency_check(device: str) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from gumbel_jax import ops
    from gumbel_jax.checkpoints import t5_from_tensors
    from gumbel_jax.models import FiDReader, RankT5

    reader_cfg, ranker_cfg = model_architectures(
        common.model_config("tiny", dtype="float32"), common.TINY_VOCAB)
    shape = common.Shape(batch=3, docs=6, doc_len=12, answer_len=5, k=3)
    ref = TorchGRerank(reader_cfg, ranker_cfg, device=device, dtype=torch.float32,
                       score_token=7, k=shape.k)
    ref.ranker.eval()
    batch = common.synthetic_batch(np.random.default_rng(1), shape, reader_cfg.vocab_size)
    noise = np.asarray(ops.sample_gumbel(jax.random.key(2), (shape.k, shape.batch, shape.docs)))
    torch_batch = _to_torch(batch, torch, device)
    loss_ref, scores_ref = ref.loss(torch_batch, torch.from_numpy(noise.copy()).to(device))
    scores_ref.retain_grad()
    loss_ref.backward()

    def numpy_state(model):
        return {n: t.detach().float().cpu().numpy() for n, t in model.state_dict().items()}

    reader = FiDReader(t5_from_tensors(reader_cfg, numpy_state(ref.reader)))
    ranker = RankT5(t5_from_tensors(ranker_cfg, numpy_state(ref.ranker)), score_token_id=7)
    jb = jax.tree.map(jnp.asarray, batch)
    scores = ranker(jb["ranker_ids"], jb["ranker_mask"])
    memory = reader.encode(jb["reader_ids"], jb["reader_mask"])

    def loss_of_scores(scores):
        log_mask = ops.log_relaxed_topk_from_noise(scores, jnp.asarray(noise), tau=0.5,
                                                   kappa=1.0, valid=jb["doc_valid"])
        log_probs = reader.token_log_probs(memory, jb["answer_ids"], jb["answer_mask"],
                                           log_mask)
        return -(log_probs.sum(-1) / jb["answer_mask"].sum(-1)).mean()

    loss, grad = jax.value_and_grad(loss_of_scores)(scores)
    return {
        "loss_jax": float(loss), "loss_torch": float(loss_ref.detach()),
        # Over real candidates: a fully padded candidate's score is arbitrary (and masked).
        "scores_max_abs_diff": float(np.abs(np.asarray(scores)
                                            - scores_ref.detach().cpu().numpy())
                                     [batch["doc_valid"]].max()),
        "grad_scores_max_abs_diff": float(np.abs(np.asarray(grad)
                                                 - scores_ref.grad.cpu().numpy()).max()),
        "grad_scores_max_abs": float(np.abs(np.asarray(grad)).max()),
    }


def run(args, save=lambda report: None) -> dict:
    """The report; ``save(report)`` is called after every timing with the report so far."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"benchmark": "torch_reference", "torch": torch.__version__, "device": device,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "setup": {"reader": "bfloat16, encoder SDPA under no_grad, decoder eager",
                        "reranker": "bfloat16 weights and residual stream, SDPA, float32 "
                                    "master weights, fused AdamW (on CUDA)",
                        "activation": "gelu_pytorch_tanh"}}
    if args.check:
        report["consistency"] = consistency_check(device)
    paper = args.size == "paper"
    # The same architectures the JAX benchmark builds (float32 configs: the PyTorch model
    # sets its own dtypes).
    reader_cfg, ranker_cfg = model_architectures(common.model_config(args.size,
                                                                     dtype="float32"),
                                                 common.TINY_VOCAB)
    model = TorchGRerank(reader_cfg, ranker_cfg, device=device, dtype=torch.bfloat16,
                         score_token=RANKT5_SCORE_TOKEN_ID if paper else 7, k=args.k)
    for batch_size, mode in attempts(args):
        shape = common.Shape(batch_size, args.docs, args.doc_len, args.answer_len, args.k)
        target = report if batch_size == args.batch else report.setdefault(
            "other_batches", {}).setdefault(str(batch_size), {})
        target["shape"] = dataclasses.asdict(shape)
        target[mode] = _time_mode(torch, device, model, shape, mode, args, reader_cfg,
                                  ranker_cfg, report["device_name"])
        save(report)  # a later attempt that never returns cannot lose this one
    return report


def attempts(args) -> list[tuple[int, str]]:
    """(batch, mode) in the order they run: eager at ``--batch``, the ``--extra_batches``
    attempts, then the compiled runs (the slowest to start): the whole step, and last the
    per-block compile, which changes the models in place (an eager run after it would be
    compiled too)."""
    runs = [(args.batch, mode) for mode in args.modes]
    runs += [(batch, mode) for batch in args.extra_batches for mode in args.extra_modes]
    order = {"eager": 0, "compile": 1, "compile_blocks": 2}
    return sorted(runs, key=lambda run: order[run[1]])


def _time_mode(torch, device, model, shape, mode, args, reader_cfg, ranker_cfg,
               device_name) -> dict:
    """One timing of ``model.step`` (eager or compiled) on a synthetic batch of ``shape``."""
    batch = _to_torch(common.synthetic_batch(np.random.default_rng(0), shape,
                                             reader_cfg.vocab_size), torch, device)
    generator = torch.Generator(device=device).manual_seed(0)

    def noise():
        u = torch.rand((shape.k, shape.batch, shape.docs), device=device, generator=generator)
        return -torch.log(-torch.log(u.clamp(min=1e-20, max=1 - 1e-7)))

    flops = common.grerank_step_flops(reader_cfg, ranker_cfg, shape)["total"]
    if mode == "compile_blocks":
        compile_blocks(model)
    step = torch.compile(model.step) if mode == "compile" else model.step
    result = _time_torch(torch, device, lambda: step(batch, noise()), args, shape.batch,
                         flops)
    if mode != "eager" and "first_call_s" in result:
        # The first call traces and compiles; the compile time is what it costs beyond an
        # ordinary step.
        result["compile_s"] = result["first_call_s"] - result["step_s_median"]
    peak = common.datasheet_peak_tflops(device_name)
    if peak and "achieved_tflops" in result:
        result["mfu_datasheet"] = result["achieved_tflops"] / peak
    return result


def compile_blocks(model: TorchGRerank) -> int:
    """Compile every T5 block of both models in place (``nn.Module.compile``), once; returns
    how many. The loss, the relaxed top-k and the optimizer stay eager: they are a few small
    kernels next to the blocks' matmuls and attention."""
    import torch
    import transformers

    blocks = [module for net in (model.reader, model.ranker) for module in net.modules()
              if isinstance(module, transformers.models.t5.modeling_t5.T5Block)]
    # Eight kinds of block (reader/reranker x encoder/decoder x first/other) times the batch
    # sizes timed: more graphs than dynamo's default limit of 8, past which it runs the
    # rest eagerly (the first H100 call's batch-32 "compile" took 0.25 s).
    dynamo = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
    if not getattr(model, "blocks_compiled", False):
        for block in blocks:
            block.compile()
        model.blocks_compiled = True
    return len(blocks)


def _time_torch(torch, device, fn, args, batch_size, flops) -> dict:
    """Median, min and max seconds per step after warm-up (each step synchronised). A step
    that fails (out of memory, a compiler error) is recorded as ``error``, not raised, so one
    attempt cannot lose the rest of a run."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        fn()
        sync()
        first = time.perf_counter() - start
        for _ in range(args.warmup - 1):
            fn()
        sync()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - recorded in the report, see the docstring
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        kind = "out of memory" if isinstance(error, torch.OutOfMemoryError) else (
            type(error).__name__)
        out = {"error": f"{kind}: {message}"}
        if device == "cuda":
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        return out
    median = float(np.median(times))
    out = {"first_call_s": first, "step_s_median": median, "step_s_min": float(min(times)),
           "step_s_max": float(max(times)), "steps": len(times),
           "questions_per_s": batch_size / median, "achieved_tflops": flops / median / 1e12}
    if device == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return out


MODES = ["eager", "compile", "compile_blocks"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_shape_arguments(p)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
    p.add_argument("--extra_batches", type=int, nargs="*", default=[],
                   help="also try these batch sizes (same models) in --extra_modes; an "
                        "attempt that runs out of memory is recorded as such")
    p.add_argument("--extra_modes", nargs="+", choices=MODES,
                   default=["eager"])
    p.add_argument("--check", action="store_true",
                   help="first compare the loss and its gradient with ours on tiny models "
                        "(whatever --size says): shared weights, same noise")
    p.add_argument("--out", default=None)
    args = common.fill_shape_defaults(p.parse_args(argv), paper_batch=16)
    common.write_report(args.out, run(args, save=lambda report: _save(args.out, report)))


def _save(path, report) -> None:
    if path:
        common.write_report(path, report, echo=False)


if __name__ == "__main__":
    main()
