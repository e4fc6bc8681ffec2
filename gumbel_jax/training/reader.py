"""Training a Fusion-in-Decoder reader (the demo trains its own; the paper starts from a
trained FiD checkpoint). The reader learns p(answer | question, passages) by teacher forcing
on subsets of each question's candidates that contain every gold passage, so it learns to
read them among distractors; afterwards it is frozen and only the reranker trains.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gumbel_jax import metrics, ops
from gumbel_jax.data.batch import Batch


def gold_subsets(key, batch: Batch, *, num_slots: int, drop_indirect: float = 0.0) -> Batch:
    """Cut each question's candidates down to ``num_slots`` passages the reader trains on:
    every gold passage plus a uniformly random number (at least one, when there are any) of
    the other valid candidates, chosen at random; unused slots are padding. With probability
    ``drop_indirect`` a question's indirect gold passages (those without the answer) are left
    out, as a retriever would sometimes miss them: the reader then learns to answer from the
    answer passage alone when it is all there is, and to guess when it is not.

    Reading a few passages in slots rather than masking most of them keeps the encoder's cost
    at ``num_slots`` passages. Varying the number of distractors teaches the reader to answer
    from a handful of passages (the reranker's top k) and from many (a soft mask spreads over
    all of them); FiD's decoder has no notion of passage order, so order does not matter.

    Args:
      key: a PRNG key.
      batch: a ``Batch`` (or the pipeline's dict of its fields).
      num_slots: passages kept per question (>= the number of gold passages).
      drop_indirect: the probability of leaving out a question's indirect passages.

    Returns:
      ``batch`` with those four entries cut to ``num_slots`` candidates.
    """
    batch = Batch.of(batch)
    order_key, count_key, drop_key = jax.random.split(key, 3)
    drop = jax.random.bernoulli(drop_key, drop_indirect, batch.gold.shape[:1])[:, None]
    available = batch.doc_valid & ~(drop & batch.indirect)
    gold = batch.gold & available
    others = available & ~gold
    noise = jax.random.uniform(order_key, gold.shape)
    # Golds first, then the other valid candidates in random order, padding last.
    priority = jnp.where(gold, 2.0, jnp.where(others, noise, -1.0))
    order = jnp.argsort(-priority, axis=-1)[:, :num_slots]
    room = jnp.clip(num_slots - gold.sum(-1), 0, others.sum(-1))
    low = jnp.minimum(room, 1)
    count = gold.sum(-1) + low + jnp.floor(
        jax.random.uniform(count_key, room.shape) * (room - low + 1)).astype(room.dtype)
    keep = jnp.arange(num_slots)[None, :] < count[:, None]
    pick = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                         axis=1)
    valid = pick(available) & keep
    return batch.replace(reader_ids=pick(batch.reader_ids),
                         reader_mask=pick(batch.reader_mask) & valid[..., None],
                         doc_valid=valid, gold=pick(gold) & valid)


def reader_loss(reader, batch: Batch, doc_log_mask):
    """Mean over questions of the answer's per-token negative log-likelihood."""
    batch = Batch.of(batch)
    token_log_probs = reader.token_log_probs(
        reader.encode(batch.reader_ids, batch.reader_mask),
        batch.answer_ids, batch.answer_mask, doc_log_mask)
    tokens = jnp.maximum(batch.answer_mask.sum(-1), 1)
    return -(token_log_probs.sum(-1) / tokens).mean()


def make_reader_step(reader_graph, tx, *, num_slots: int, drop_indirect: float = 0.0):
    """``step(state, opt_state, batch, key) -> (state, opt_state, loss)``, jitted, with the
    reader's state and the optimizer state donated; the reader reads :func:`gold_subsets`."""

    def loss_fn(state, batch, key):
        reader = nnx.merge(reader_graph, state)
        batch = gold_subsets(key, batch, num_slots=num_slots, drop_indirect=drop_indirect)
        return reader_loss(reader, batch, ops.mask_to_log_mask(
            batch.doc_valid.astype(jnp.float32)))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(state, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(state, batch, key)
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    return step


def train_reader(reader, batches, *, num_steps: int, learning_rate: float, num_slots: int,
                 drop_indirect: float = 0.0, seed: int = 0, on_step=None) -> list[float]:
    """Train every parameter of ``reader`` (updated in place) for ``num_steps`` batches from
    the iterator ``batches``; the reader is frozen afterwards. Returns the losses.

    ``on_step(step, loss)`` is called after each step (progress bars); the loss is waited
    for each step, so nothing runs ahead of the host.
    """
    reader.frozen = False  # gradients must reach the encoder while the reader trains
    graph, state = nnx.split(reader)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(num_steps // 20, 1),
                                                  max(num_steps, 2), learning_rate * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    opt_state = tx.init(state)
    step_fn = make_reader_step(graph, tx, num_slots=num_slots, drop_indirect=drop_indirect)
    key = jax.random.key(seed)
    losses = []
    for step in range(num_steps):
        batch = {name: jnp.asarray(value) for name, value in next(batches).items()}
        state, opt_state, loss = step_fn(state, opt_state, batch, jax.random.fold_in(key, step))
        losses.append(float(loss))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    nnx.update(reader, state)
    reader.frozen = True
    return losses


@functools.lru_cache(maxsize=8)
def _generator(graph, max_length: int):
    """One jitted greedy decoder per reader architecture, shared by every
    :func:`reader_exact_match` call (the mask is an argument, so any setting reuses it)."""

    @jax.jit
    def generate(state, batch, mask):
        batch = Batch.of(batch)
        reader = nnx.merge(graph, state)
        return reader.generate(reader.encode(batch.reader_ids, batch.reader_mask),
                               ops.mask_to_log_mask(mask.astype(jnp.float32)),
                               max_length=max_length)

    return generate


def reader_exact_match(reader, batches, tokenizer, *, mask_fn, max_length: int) -> float:
    """EM of the reader's greedy answers when it reads the candidates ``mask_fn(batch)``
    selects (``[batch, docs]`` boolean); ``batches`` yields ``(batch, answers)`` pairs, the
    answers as lists of strings."""
    graph, state = nnx.split(reader)
    generate = _generator(graph, max_length)
    scores = []
    for batch, answers in batches:
        mask = mask_fn(batch) & Batch.of(batch).doc_valid
        tokens = np.asarray(generate(state, batch, mask))
        for row, gold in enumerate(answers):
            text = tokenizer.decode(tokens[row], skip_special_tokens=True)
            scores.append(metrics.exact_match(text, gold))
    return float(np.mean(scores))
