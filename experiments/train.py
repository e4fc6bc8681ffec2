"""Train a reranker: ``python -m experiments.train --config FILE --workdir DIR [--set k=v]``.

Resumes automatically from DIR; evaluates at the end (DIR/eval.json, eval.md,
eval_predictions.jsonl); metrics every ``train.log_every`` steps, and held-out evaluations
every ``train.eval_every`` steps, in DIR/metrics.jsonl (cut back to the restored step on
resume); ``train.best_metric`` keeps the best checkpoint in DIR/best.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True, type=user_path)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.objective.tau=0.3")
    add_parallel_arguments(p)
    args = p.parse_args(argv)
    from gumbel_jax.data.validation import DataError
    from gumbel_jax.training.experiment import run_training
    from gumbel_jax.training.loop import NonFiniteLossError

    try:
        config = load_config(args.config, args.set)
        mesh = start_parallel(args)
        metrics = run_training(config, args.workdir, mesh=mesh)
    except (ValueError, DataError, NonFiniteLossError, FileNotFoundError) as error:
        return fail(str(error))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
