"""Reader training: the gold subsets it reads, and that a tiny reader learns to read."""

import jax
import jax.numpy as jnp
import numpy as np

from gumbel_jax.data.batch import Batch
from gumbel_jax.training.reader import gold_subsets, reader_loss


def _batch(rows=400, docs=10):
    rng = np.random.default_rng(0)
    valid = np.arange(docs)[None, :] < rng.integers(4, docs + 1, size=(rows, 1))
    gold = np.zeros((rows, docs), bool)
    gold[:, 0] = gold[:, 1] = True  # passage 0 is the indirect one
    indirect = np.zeros((rows, docs), bool)
    indirect[:, 0] = True
    ids = np.broadcast_to(np.arange(docs)[None, :, None] + 10, (rows, docs, 3)).copy()
    none = dict.fromkeys(("ranker_ids", "ranker_mask", "answer_ids", "answer_mask",
                          "example_id"))  # not read by gold_subsets
    return Batch(reader_ids=jnp.asarray(ids),
                 reader_mask=jnp.asarray(valid[..., None].repeat(3, -1)),
                 doc_valid=jnp.asarray(valid), gold=jnp.asarray(gold),
                 indirect=jnp.asarray(indirect), **none)


def test_gold_subsets_keep_golds_and_a_random_number_of_others():
    batch = _batch()
    out = jax.jit(lambda k, b: gold_subsets(k, b, num_slots=5))(jax.random.key(0), batch)
    assert out.reader_ids.shape == (400, 5, 3) and out.doc_valid.shape == (400, 5)
    chosen = np.asarray(out.reader_ids[..., 0]) - 10  # original passage index per slot
    valid = np.asarray(out.doc_valid)
    original_valid = np.asarray(batch.doc_valid)
    for row in range(400):
        picked = chosen[row][valid[row]]
        assert {0, 1} <= set(picked.tolist())  # both golds, every time
        assert len(set(picked.tolist())) == len(picked)  # no passage twice
        assert original_valid[row][picked].all()  # never a padded candidate
    assert not np.asarray(out.reader_mask)[~valid].any()
    others = valid.sum(1) - 2
    # between 1 and 3 others, each count occurring (P(a count never occurs) < 1e-30)
    assert others.min() == 1 and others.max() == 3
    assert np.asarray(out.gold).sum(1).tolist() == [2] * 400


def test_gold_subsets_drop_the_indirect_passage_at_the_given_rate():
    batch = _batch()
    out = gold_subsets(jax.random.key(1), batch, num_slots=5, drop_indirect=0.5)
    chosen = np.asarray(out.reader_ids[..., 0]) - 10
    has_bridge = ((chosen == 0) & np.asarray(out.doc_valid)).any(1)
    # Binomial(400, 0.5): 5 standard deviations is 50; false failure rate < 1e-6.
    assert abs(has_bridge.sum() - 200) < 50
    assert (((chosen == 1) & np.asarray(out.doc_valid)).any(1)).all()  # answer kept
    never = gold_subsets(jax.random.key(1), batch, num_slots=5, drop_indirect=1.0)
    assert not ((np.asarray(never.reader_ids[..., 0]) == 10)
                & np.asarray(never.doc_valid)).any()


def test_reader_loss_is_the_mean_per_token_nll():
    class Reader:  # a reader whose log-probabilities are known
        def encode(self, ids, mask, dropout_key=None):
            return ids

        def token_log_probs(self, memory, answer_ids, answer_mask, doc_log_mask,
                            dropout_key=None):
            return jnp.where(answer_mask, -jnp.arange(1.0, 4.0)[None, :], 0.0)

    batch = Batch(**{**dict.fromkeys(Batch.fields()),
                     "answer_ids": jnp.zeros((2, 3), jnp.int32),
                     "answer_mask": jnp.array([[True, True, True], [True, False, False]])})
    # (1 + 2 + 3) / 3 = 2 and 1 / 1 = 1 -> mean 1.5
    np.testing.assert_allclose(reader_loss(Reader(), batch, None), 1.5)
