"""A word-level tokenizer for the synthetic world (the ``tokenizers`` library), wrapped as a
Hugging Face fast tokenizer so the pipeline treats it like any checkpoint's tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from gumbel_jax.data.records import Record

SPECIAL_TOKENS = {"<pad>": 0, "</s>": 1, "<unk>": 2}


def word_level_tokenizer(records: Iterable[Record], *, extra_texts: Iterable[str] = ()):
    """Vocabulary = every whitespace-separated word of the records' questions, passages
    (with the reader's and reranker's template words) and answers. Pad 0, EOS 1, UNK 2, as
    in T5."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set()
    template_words = "question: title: context: Query: Document:"
    for text in [template_words, *extra_texts]:
        words.update(text.split())
    for record in records:
        words.update(record.question.split())
        for answer in record.answers:
            words.update(answer.split())
        for passage in record.ctxs:
            words.update(passage.title.split())
            words.update(passage.text.split())
    vocab = dict(SPECIAL_TOKENS)
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1",
        special_tokens=[("</s>", SPECIAL_TOKENS["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
