"""Export a training run: restore its reranker (and frozen reader) and write them as
Hugging Face folders with model cards (``gumbel_jax.checkpoints.export`` writes the folders)."""

from __future__ import annotations

import dataclasses
import os

from gumbel_jax.checkpoints.export import export_reader, export_reranker, model_kind
from gumbel_jax.training.experiment import RestoredRun, restore_run


def run_card(run: RestoredRun, *, role: str = "reranker") -> dict:
    """The model card entries of a restored run: base checkpoint, objective and settings,
    data, and the run's held-out evaluation table."""
    config = run.config
    model, data, train = config.model, config.data, config.train
    source = getattr(model, role)
    init = getattr(model, f"{role}_init")
    if source == "tiny":
        base = "none: a tiny randomly initialised model (tests and the synthetic demo)"
    elif init == "random":
        base = f"random initialisation of {getattr(model, f'{role}_architecture')}"
    else:
        base = source
    card = {"name": f"{config.name} ({role})", "base_model": base,
            "data": {"source": data.source, "train split": data.train_split,
                     "eval split": data.eval_split, "candidates per question":
                     data.num_candidates, "reranker tokens": data.ranker_length,
                     "reader tokens": data.reader_length}}
    if role == "reranker":
        card["objective"] = dataclasses.asdict(train.objective)
        card["training"] = {"steps (exported checkpoint)": run.step,
                            "steps (configured)": train.num_steps,
                            "seed": train.seed, "batch size": data.batch_size,
                            **{f"optimizer.{k}": v for k, v in
                               dataclasses.asdict(train.optimizer).items()},
                            "compute dtype": model.dtype}
        card["evaluation"] = (run.evaluation if run.evaluation else
                              "not evaluated (the run has no eval.json)")
    else:
        card["notes"] = ("The frozen reader the reranker was trained through, with the "
                         f"weights the run held (compute dtype {model.dtype}: a bfloat16 run "
                         "keeps its reader's weight matrices in bfloat16).")
    return card


def export_run(workdir: str | os.PathLike, out_dir: str | os.PathLike, *,
               reader_out: str | os.PathLike | None = None, checkpoint: str = "latest",
               overwrite: bool = False) -> dict:
    """Export a training run's reranker (and, with ``reader_out``, its frozen reader) as
    Hugging Face folders with model cards. Returns a summary (paths, kind, step)."""
    run = restore_run(workdir, checkpoint=checkpoint)
    data = run.config.data
    out = export_reranker(run.ranker, out_dir, tokenizer=run.ranker_tokenizer,
                          card=run_card(run), max_length=data.ranker_length,
                          overwrite=overwrite)
    summary = {"reranker": str(out), "kind": model_kind(run.ranker), "step": run.step}
    if reader_out is not None:
        summary["reader"] = str(export_reader(
            run.reader, reader_out, tokenizer=run.reader_tokenizer,
            card=run_card(run, role="reader"), max_length=data.reader_length,
            answer_length=data.answer_length, overwrite=overwrite))
    return summary
