"""Export a trained reranker as a Hugging Face folder:
``python -m experiments.export --workdir RUN --out DIR [--reader_out DIR]``.

The folder (safetensors weights, config.json, tokenizer files, README.md model card) loads in
transformers (RankT5: ``T5ForConditionalGeneration``; cross-encoders: a one-label
``*ForSequenceClassification``), sentence-transformers' ``CrossEncoder`` and FlagEmbedding's
``FlagReranker``; ``python -m experiments.rerank --reranker DIR`` ranks your own records with
it. See docs/use_reranker.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from experiments.cli import fail, user_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=user_path, help="a training run folder")
    p.add_argument("--out", required=True, type=user_path,
                   help="the folder to write (absent or empty, unless --overwrite)")
    p.add_argument("--reader_out", default=None, type=user_path,
                   help="also export the run's frozen reader to this folder")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                   help="the run's latest checkpoint, or its best one (train.best_metric)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing folders (only once the new export is complete)")
    args = p.parse_args(argv)
    from gumbel_jax.checkpoints import CheckpointError
    from gumbel_jax.data.validation import DataError
    from gumbel_jax.training.export import export_run

    try:
        summary = export_run(args.workdir, args.out, reader_out=args.reader_out,
                             checkpoint=args.checkpoint, overwrite=args.overwrite)
    except (ValueError, CheckpointError, DataError, FileNotFoundError) as error:
        return fail(str(error))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
