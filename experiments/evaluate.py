"""Evaluate the latest checkpoint of a run: ``python -m experiments.evaluate --workdir DIR``."""

from __future__ import annotations

import argparse
import json
import sys

from experiments.cli import fail, user_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=user_path)
    args = p.parse_args(argv)
    from gumbel_jax.training.experiment import run_evaluation

    try:
        metrics = run_evaluation(args.workdir)
    except (ValueError, FileNotFoundError) as error:
        return fail(str(error))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
