"""Export: our rerankers and readers as Hugging Face folders (safetensors, config.json,
tokenizer files, a model card) that transformers, sentence-transformers' ``CrossEncoder`` and
FlagEmbedding's ``FlagReranker`` load with the same scores; and reading such a folder back.

The tensor names are the import's (``t5_param_specs``, ``cross_encoder_specs``) run
backwards, so import and export cannot drift apart. A training run's folder is exported by
``gumbel_jax.training.export.export_run`` (``python -m experiments.export``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gumbel_jax.checkpoints._io import (
    CheckpointError,
    ParamSpec,
    read_config,
    resolve_model_dir,
    transpose,
)
from gumbel_jax.checkpoints.bert import cross_encoder_specs, load_cross_encoder
from gumbel_jax.checkpoints.t5 import load_fid_reader, load_rankt5, t5_param_specs
from gumbel_jax.models.bert import BertConfig, CrossEncoder
from gumbel_jax.models.fid import FiDReader
from gumbel_jax.models.rankt5 import RANKT5_SCORE_TOKEN_ID, RankT5
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder

# config.json carries what a user of the folder needs beyond the architecture: which of our
# models it is, the score token of RankT5, the input template and the trained input length.
METADATA_KEY = "gumbel_jax"
TEMPLATES = {
    "rankt5": "Query: {question} Document: {title} {text}",
    "cross_encoder": "({question}, {title} {text}) as a sentence pair",
    "fid_reader": "question: {question} title: {title} context: {text}",
}
# sentence-transformers' CrossEncoder.predict applies this to the logit: identity, so its
# scores are the logits our model and FlagEmbedding's FlagReranker give.
_CROSS_ENCODER_ACTIVATION = "torch.nn.modules.linear.Identity"
_CARD_KEYS = {"name", "base_model", "objective", "training", "data", "evaluation", "notes"}


class ExportError(ValueError):
    """A model cannot be exported as asked; the message says why."""


# ------------------------------------------------------------------ parameters -> tensors

# The inverse of each transform a ParamSpec may apply on import.
_INVERSE = {None: None, transpose: transpose}


def _value(variable) -> np.ndarray:
    value = variable.get_value() if hasattr(variable, "get_value") else variable.value
    return np.asarray(jnp.asarray(value, jnp.float32))


def tensors_from_specs(model: nnx.Module, specs: Iterable[ParamSpec], *,
                       source: str = "model") -> dict[str, np.ndarray]:
    """The checkpoint tensors (float32, contiguous) that ``assign_params(model, specs, …)``
    would read back into exactly ``model``'s parameters; every parameter must be covered."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    specs = list(specs)
    uncovered = sorted(".".join(map(str, p)) for p in set(flat) - {s[0] for s in specs})
    if uncovered:
        raise ExportError(f"{source}: parameters with no checkpoint name: "
                          f"{', '.join(uncovered)}")
    tensors = {}
    for path, name, transform in specs:
        if transform not in _INVERSE:
            raise ExportError(f"{source}: no inverse known for the import transform of {name}")
        inverse, value = _INVERSE[transform], _value(flat[path])
        tensors[name] = np.ascontiguousarray(inverse(value) if inverse else value)
    return tensors


def t5_to_tensors(t5: T5EncoderDecoder) -> dict[str, np.ndarray]:
    """A ``T5ForConditionalGeneration`` state dict (tied embeddings written once, as
    ``shared.weight``; an untied head as ``lm_head.weight``)."""
    return tensors_from_specs(t5, t5_param_specs(t5.config), source="T5")


def cross_encoder_to_tensors(model: CrossEncoder) -> dict[str, np.ndarray]:
    """A ``BertForSequenceClassification`` / ``XLMRobertaForSequenceClassification`` state
    dict: the import's names with the task model's ``bert.`` / ``roberta.`` prefix (which the
    import strips) on everything but the classification head."""
    prefix = "roberta." if model.config.family == "roberta" else "bert."
    tensors = tensors_from_specs(model, cross_encoder_specs(model.config),
                                 source="cross-encoder")
    return {(name if name.startswith("classifier.") else prefix + name): value
            for name, value in tensors.items()}


# ------------------------------------------------------------------ configs -> config.json

def t5_config_to_hf(config: T5Config) -> dict:
    """``config.json`` of a ``T5ForConditionalGeneration``; ``T5Config.from_hf`` of it gives
    ``config`` back (compute options aside). ``tie_word_embeddings`` is the real flag
    (False for T5 v1.1: untied head, no output scaling), as in the public checkpoints."""
    fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
              "num_heads", "relative_attention_num_buckets",
              "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj",
              "tie_word_embeddings", "pad_token_id", "eos_token_id", "decoder_start_token_id",
              "dropout_rate")
    return {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
            "is_encoder_decoder": True, **{f: getattr(config, f) for f in fields}}


def bert_config_to_hf(config: BertConfig) -> dict:
    """``config.json`` of a one-label ``*ForSequenceClassification`` (XLM-RoBERTa for the
    roberta family, as BGE rerankers; BERT otherwise); ``BertConfig.from_hf`` of it gives
    ``config`` back (compute options aside)."""
    roberta = config.family == "roberta"
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "pad_token_id")
    return {"architectures": ["XLMRobertaForSequenceClassification" if roberta
                              else "BertForSequenceClassification"],
            "model_type": "xlm-roberta" if roberta else "bert",
            **{f: getattr(config, f) for f in fields},
            "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0},
            "sentence_transformers": {"activation_fn": _CROSS_ENCODER_ACTIVATION}}


# ------------------------------------------------------------------ folders

def model_kind(model) -> str:
    """"rankt5", "cross_encoder" or "fid_reader": the folder layout a model exports to."""
    if isinstance(model, RankT5):
        return "rankt5"
    if isinstance(model, CrossEncoder):
        return "cross_encoder"
    if isinstance(model, FiDReader):
        return "fid_reader"
    raise ExportError(f"cannot export a {type(model).__name__}: expected a RankT5, a "
                      "CrossEncoder or a FiDReader")


def _weights_and_config(model, kind: str) -> tuple[dict, dict]:
    if kind == "cross_encoder":
        return cross_encoder_to_tensors(model), bert_config_to_hf(model.config)
    return t5_to_tensors(model.t5), t5_config_to_hf(model.t5.config)


def _metadata(model, kind: str, tokenizer, max_length: int | None,
              answer_length: int | None) -> dict:
    meta: dict[str, Any] = {"kind": kind, "template": TEMPLATES[kind]}
    if kind == "rankt5":
        meta["score_token_id"] = int(model.score_token_id)
        meta["score_token"] = tokenizer.convert_ids_to_tokens(int(model.score_token_id))
    if max_length:
        meta["max_length"] = int(max_length)
    if answer_length:
        meta["answer_length"] = int(answer_length)
    return meta


def _position_limit(config) -> int | None:
    if isinstance(config, BertConfig):
        reserved = config.pad_token_id + 1 if config.family == "roberta" else 0
        return config.max_position_embeddings - reserved
    return None  # T5: relative positions, no hard limit


def _save_tokenizer(tokenizer, folder: pathlib.Path, model_config, kind: str) -> None:
    """The tokenizer's files, with the inputs the model takes (no segment ids for a model
    with one token type, T5 included) and a finite ``model_max_length``."""
    tokenizer.save_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
    names = list(tokenizer.model_input_names)
    if kind != "cross_encoder" or model_config.type_vocab_size < 2:
        names = [n for n in names if n != "token_type_ids"]
    settings["model_input_names"] = names
    limit = _position_limit(model_config)
    current = settings.get("model_max_length") or tokenizer.model_max_length
    if limit and (current is None or current > limit):
        settings["model_max_length"] = limit
    if settings.get("tokenizer_class") == "TokenizersBackend":
        # transformers 5's name for a bare fast tokenizer; 4.x knows it by this one.
        settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(settings, indent=2) + "\n")


def _replace_folder(staging: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Move the finished export into place; an existing folder is replaced only now, so an
    interrupted export never leaves a half-written or half-deleted folder."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old)
    else:
        staging.rename(out_dir)


def _check_destination(out_dir: pathlib.Path, overwrite: bool) -> None:
    if out_dir.is_file():
        raise ExportError(f"{out_dir}: is a file; expected a folder to export into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir}: exists and is not empty (pass overwrite=True / "
                          "--overwrite to replace it)")


def export_model(model, out_dir: str | os.PathLike, *, tokenizer, card: Mapping | None = None,
                 max_length: int | None = None, answer_length: int | None = None,
                 overwrite: bool = False) -> pathlib.Path:
    """Write ``model`` (RankT5, CrossEncoder or FiDReader) as a Hugging Face folder.

    Args:
      model: the model; its parameters are written in float32.
      out_dir: the folder; it must be absent or empty unless ``overwrite``. It appears
        complete or not at all (written beside it, then renamed).
      tokenizer: the model's Hugging Face tokenizer (saved with it).
      card: what the model card (README.md) reports: ``name``, ``base_model``,
        ``objective`` and ``training`` (dicts of settings), ``data`` (dict or text),
        ``evaluation`` (metric -> value), ``notes``; all optional.
      max_length: the input tokens per (question, passage) the model was trained with.
      answer_length: a reader's answer tokens (readers only).

    Returns:
      the folder.
    """
    kind = model_kind(model)
    unknown = set(card or {}) - _CARD_KEYS
    if unknown:
        raise ExportError(f"unknown model card keys {sorted(unknown)}; known: "
                          f"{sorted(_CARD_KEYS)}")
    out_dir = pathlib.Path(out_dir).expanduser().absolute()
    _check_destination(out_dir, overwrite)
    tensors, config = _weights_and_config(model, kind)
    config[METADATA_KEY] = _metadata(model, kind, tokenizer, max_length, answer_length)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        from safetensors.numpy import save_file

        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _save_tokenizer(tokenizer, staging,
                        model.config if kind == "cross_encoder" else model.t5.config, kind)
        (staging / "README.md").write_text(model_card(kind, config, dict(card or {})))
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def export_reranker(ranker, out_dir, *, tokenizer, card: Mapping | None = None,
                    max_length: int | None = None, overwrite: bool = False) -> pathlib.Path:
    """A RankT5 as a ``T5ForConditionalGeneration`` folder (score: the first decoder step's
    logit of the score token), a cross-encoder as a one-label
    ``*ForSequenceClassification`` folder. See :func:`export_model`."""
    if model_kind(ranker) == "fid_reader":
        raise ExportError("export_reranker got a FiDReader; use export_reader")
    return export_model(ranker, out_dir, tokenizer=tokenizer, card=card,
                        max_length=max_length, overwrite=overwrite)


def export_reader(reader: FiDReader, out_dir, *, tokenizer, card: Mapping | None = None,
                  max_length: int | None = None, answer_length: int | None = None,
                  overwrite: bool = False) -> pathlib.Path:
    """A FiD reader as a ``T5ForConditionalGeneration`` folder (FiD reads each passage
    encoded alone, the encodings concatenated). See :func:`export_model`."""
    if model_kind(reader) != "fid_reader":
        raise ExportError(f"export_reader got a {type(reader).__name__}; use export_reranker")
    return export_model(reader, out_dir, tokenizer=tokenizer, card=card,
                        max_length=max_length, answer_length=answer_length,
                        overwrite=overwrite)


# ------------------------------------------------------------------ model card

def _table(values: Mapping) -> str:
    rows = [f"| {k} | {f'{v:.4f}' if isinstance(v, float) else v} |" for k, v in values.items()]
    return "| | |\n|---|---|\n" + "\n".join(rows)


def _usage(kind: str, config: dict) -> str:
    meta = config[METADATA_KEY]
    if kind == "cross_encoder":
        architecture = config["architectures"][0]
        return (
            "```python\nfrom sentence_transformers import CrossEncoder\n\n"
            "model = CrossEncoder(\"PATH\")  # predict returns the raw logit (config: "
            "activation_fn Identity)\nscores = model.predict([(question, f\"{title} {text}\") "
            "for title, text in passages])\n```\n\n"
            f"The folder is a plain `{architecture}` with `num_labels = 1`: "
            "`AutoModelForSequenceClassification` gives the same logit "
            "(`model(**tokenizer(questions, passages, padding=True, return_tensors=\"pt\"))"
            ".logits[:, 0]`)"
            + (", and FlagEmbedding's `FlagReranker(\"PATH\").compute_score([[question, "
               "passage], ...])` loads it by the BGE reranker convention (an "
               "XLMRobertaForSequenceClassification folder with one label, the tokenizer's "
               "own pair encoding) and returns the same logit (`normalize=True`: its "
               "sigmoid)." if architecture.startswith("XLMRoberta") else ".") + "\n")
    if kind == "rankt5":
        token = meta["score_token_id"]
        return (
            "```python\nimport torch\nfrom transformers import AutoTokenizer, "
            "T5ForConditionalGeneration\n\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\")\n"
            "model = T5ForConditionalGeneration.from_pretrained(\"PATH\").eval()\n"
            "texts = [f\"Query: {question} Document: {title} {text}\" for title, text in "
            "passages]\nbatch = tokenizer(texts, padding=True, return_tensors=\"pt\""
            + (f", truncation=True, max_length={meta['max_length']}" if "max_length" in meta
               else "") + ")\n"
            "start = torch.full((len(texts), 1), model.config.decoder_start_token_id)\n"
            "with torch.no_grad():\n"
            f"    scores = model(**batch, decoder_input_ids=start).logits[:, 0, {token}]\n```\n")
    return ("A T5 checkpoint read in the Fusion-in-Decoder layout: encode each (question, "
            "passage) text alone, concatenate the encodings, decode over all of them (e.g. "
            "gumbel_jax's `load_fid_reader(\"PATH\")`).\n")


def _score_line(kind: str, config: dict) -> str:
    meta = config[METADATA_KEY]
    if kind == "rankt5":
        head = ("the untied LM head" if not config["tie_word_embeddings"] else
                "the LM head tied to the embeddings, decoder output scaled by d_model ** -0.5")
        token = f" (`{meta['score_token']}`)" if meta.get("score_token") else ""
        return (f"the logit of token id {meta['score_token_id']}{token} at the first decoder "
                f"step (decoder input: the start token {config['decoder_start_token_id']}), "
                f"from {head}")
    if kind == "cross_encoder":
        return "the single logit of the classification head (higher = more relevant)"
    return "none (a reader: it generates answers)"


def model_card(kind: str, config: dict, card: dict) -> str:
    """README.md of an exported folder: base checkpoint, objective and its settings, data,
    evaluation table, the score's definition and how to load it."""
    meta = config[METADATA_KEY]
    name = card.get("name") or ("reader" if kind == "fid_reader" else "reranker")
    base = card.get("base_model") or "not recorded"
    front = ["---", "library_name: transformers",
             f"pipeline_tag: {'text2text-generation' if kind == 'fid_reader' else 'text-ranking'}",
             "tags: [gumbel-jax, gumbel-reranking, rag, " +
             ("fusion-in-decoder]" if kind == "fid_reader" else "reranker]")]
    if "/" in base and " " not in base:  # a hub name
        front.append(f"base_model: {base}")
    lines = front + ["---", "", f"# {name}", "",
                     f"Exported by gumbel-jax (Gumbel Reranking in JAX/Flax) as a Hugging Face "
                     f"`{config['architectures'][0]}` folder.", "",
                     f"- base checkpoint: {base}",
                     f"- input: `{meta['template']}`" +
                     (f", cut to {meta['max_length']} tokens" if "max_length" in meta else ""),
                     f"- score: {_score_line(kind, config)}", ""]
    for title, key in (("Objective", "objective"), ("Training", "training"),
                       ("Data", "data"), ("Evaluation", "evaluation")):
        value = card.get(key)
        if value:
            lines += [f"## {title}", "", _table(value) if isinstance(value, Mapping)
                      else str(value), ""]
    if card.get("notes"):
        lines += ["## Notes", "", str(card["notes"]), ""]
    lines += ["## Use", "", _usage(kind, config)]
    return "\n".join(lines)


# ------------------------------------------------------------------ reading an export back

@dataclasses.dataclass
class LoadedModel:
    """A model read from a folder (ours or a public checkpoint) with what scoring needs."""

    model: Any  # RankT5, CrossEncoder or FiDReader
    tokenizer: Any
    kind: str  # "rankt5", "cross_encoder" or "fid_reader"
    metadata: dict  # config.json's "gumbel_jax" entry ({} for a public checkpoint)
    path: pathlib.Path


def _infer_kind(config: dict, source) -> str:
    model_type = config.get("model_type")
    if model_type == "t5":
        return "rankt5"
    if model_type in ("bert", "roberta", "xlm-roberta", "camembert"):
        return "cross_encoder"
    raise CheckpointError(f"{source}: model_type {model_type!r} is neither a T5 (RankT5) nor "
                          "a BERT / XLM-RoBERTa cross-encoder")


def _tokenizer(model_dir: pathlib.Path):
    from transformers import AutoTokenizer  # imported on use: slow to import

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as error:
        raise CheckpointError(f"{model_dir}: cannot load its tokenizer "
                              f"({type(error).__name__}: {error})") from error


def load_exported_reranker(name_or_path: str | os.PathLike, **config_overrides) -> LoadedModel:
    """A reranker folder (an export, or a public RankT5 / cross-encoder checkpoint by folder
    or hub name) with its tokenizer. ``config_overrides`` set compute options (``dtype``)."""
    model_dir = resolve_model_dir(name_or_path)
    config = read_config(model_dir)
    meta = dict(config.get(METADATA_KEY) or {})
    kind = meta.get("kind") or _infer_kind(config, model_dir)
    if kind == "rankt5":
        model = load_rankt5(model_dir, score_token_id=int(meta.get("score_token_id",
                                                                   RANKT5_SCORE_TOKEN_ID)),
                            **config_overrides)
    elif kind == "cross_encoder":
        model = load_cross_encoder(model_dir, **config_overrides)
    else:
        raise CheckpointError(f"{model_dir}: a {kind} export, not a reranker")
    return LoadedModel(model, _tokenizer(model_dir), kind, meta, model_dir)


def load_exported_reader(name_or_path: str | os.PathLike, **config_overrides) -> LoadedModel:
    """A FiD reader folder (an export, or any T5 checkpoint) with its tokenizer."""
    model_dir = resolve_model_dir(name_or_path)
    config = read_config(model_dir)
    meta = dict(config.get(METADATA_KEY) or {})
    if config.get("model_type") != "t5" or meta.get("kind", "fid_reader") != "fid_reader":
        raise CheckpointError(f"{model_dir}: not a T5 / FiD reader checkpoint "
                              f"(model_type {config.get('model_type')!r}, "
                              f"kind {meta.get('kind')!r})")
    reader = load_fid_reader(model_dir, **config_overrides)
    return LoadedModel(reader, _tokenizer(model_dir), "fid_reader", meta, model_dir)
