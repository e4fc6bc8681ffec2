"""Convert an official dataset release into a tfds dataset (array_record, no TensorFlow).

    python -m experiments.prepare_data --dataset hotpotqa --source ~/hotpotqa --data_dir ~/tfds

Afterwards ``tfds.data_source("gj_hotpotqa", split="train", data_dir=...)`` opens it on any
host. Bad records are listed with file, line and reason; too many stop the conversion with
exit status 2 and nothing half-written is left as a finished dataset.
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli import user_path
from gumbel_jax.data.validation import DataError


def main(argv=None) -> int:
    from gumbel_jax.data.tfds_builders import BUILDERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    p.add_argument("--source", type=user_path,
                   help="folder with the official files (not for synthetic)")
    p.add_argument("--data_dir", required=True, type=user_path, help="tfds data_dir (local path or gs://)")
    p.add_argument("--max_bad_records", type=int, default=100)
    args = p.parse_args(argv)
    builder_class = BUILDERS[args.dataset]
    kwargs = {"data_dir": args.data_dir}
    if args.dataset != "synthetic":
        if not args.source:
            p.error("--source is required for this dataset")
        kwargs.update(source_dir=args.source, max_bad_records=args.max_bad_records)
    try:
        builder = builder_class(**kwargs)
        builder.download_and_prepare()
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if hasattr(builder, "report"):
        print(builder.report.summary())
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(f"prepared {builder.name} in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
