"""The Reader interface: FiD implements it, a reader missing a method is named, and the
memory's document layout is the one the objectives rely on."""

import numpy as np
import pytest

from gumbel_jax.models import Memory, Reader
from gumbel_jax.models.reader import check_reader


def test_fid_is_a_reader(reader):
    assert isinstance(reader, Reader)
    check_reader(reader)


def test_a_reader_missing_methods_is_named():
    class Incomplete:
        def encode(self, input_ids, attention_mask):
            return None

    with pytest.raises(TypeError, match="lacks token_log_probs, document_attention, generate"):
        check_reader(Incomplete())


def test_memory_records_its_layout_and_splits_into_documents(reader, fid_batch):
    input_ids, attention_mask, _, _ = fid_batch
    memory = reader.encode(input_ids, attention_mask)
    assert isinstance(memory, Memory) and memory.num_docs == 5 and memory.doc_len == 6
    alone = memory.split_documents()
    assert alone.num_docs == 1 and alone.states.shape == (10, 6, memory.states.shape[-1])
    # Row b * docs + i is document i of question b, identical to encoding it alone.
    for b, i in [(0, 0), (0, 4), (1, 2)]:
        single = reader.encode(input_ids[b:b + 1, i:i + 1], attention_mask[b:b + 1, i:i + 1])
        np.testing.assert_allclose(alone.states[b * 5 + i], single.states[0], atol=1e-5)
        np.testing.assert_array_equal(alone.valid[b * 5 + i], single.valid[0])


def test_memory_is_a_pytree_whose_layout_is_static(reader, fid_batch):
    import jax

    memory = reader.encode(*fid_batch[:2])
    leaves, tree = jax.tree.flatten(memory)
    assert len(leaves) == 2  # states and valid; num_docs rides in the structure
    assert jax.tree.unflatten(tree, leaves).num_docs == 5
