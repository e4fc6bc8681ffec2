"""Train a Fusion-in-Decoder reader: ``python -m experiments.train_reader --config FILE
--workdir DIR [--export OUT] [--set k=v]``.

The configs in ``experiments/configs/readers/`` train FiD-Large readers from public T5
weights (``google-t5/t5-large``; ``--set model.reader=google/flan-t5-large`` or a folder, or
one of FiD's released checkpoints to continue training it). Resumes automatically from DIR;
metrics every ``train.log_every`` steps and held-out EM / F1 every ``train.eval_every`` steps
in DIR/metrics.jsonl; the best reader (``train.best_metric``) is kept in DIR/best, evaluated
at the end (DIR/eval.json) and exported as a Hugging Face T5 folder (safetensors,
config.json, tokenizer files, model card) to OUT (default DIR/export): the folder the paper
grid's rows read as ``--models_dir/<name>``. ``python -m experiments.reproduce --table
readers`` runs the same configs as the grid's first stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from experiments.cli import (
    add_parallel_arguments,
    fail,
    load_config,
    start_parallel,
    user_path,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a reader config (get_config())")
    p.add_argument("--workdir", required=True, type=user_path)
    p.add_argument("--export", default=None, type=user_path, metavar="OUT",
                   help="the Hugging Face folder to write (default: the config's export_dir, "
                        "else WORKDIR/export); an earlier export there is replaced once the "
                        "new one is complete")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.optimizer.learning_rate=1e-4")
    add_parallel_arguments(p)
    args = p.parse_args(argv)
    from gumbel_jax.data.validation import DataError
    from gumbel_jax.training.config import ReaderExperimentConfig
    from gumbel_jax.training.loop import NonFiniteLossError
    from gumbel_jax.training.reader import run_reader_training

    try:
        config = load_config(args.config, args.set)
        if not isinstance(config, ReaderExperimentConfig):
            raise ValueError(f"{args.config}: get_config() returned a "
                             f"{type(config).__name__}, not a ReaderExperimentConfig (reranker "
                             "configs train with python -m experiments.train)")
        if args.export:
            config = dataclasses.replace(config, export_dir=args.export)
        mesh = start_parallel(args)
        metrics = run_reader_training(config, args.workdir, mesh=mesh)
    except (ValueError, DataError, NonFiniteLossError, FileNotFoundError) as error:
        return fail(str(error))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
