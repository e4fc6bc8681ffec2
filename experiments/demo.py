"""The main job: the synthetic multi-hop experiment (offline, CPU).

Not built yet (issue 6). Until it is, this prints the plan and exits with status 2 so that
`make demo` cannot be mistaken for a finished run.
"""

import sys

PLAN = """gumbel-jax demo: not implemented yet.

When finished, `make demo` will, offline on CPU:
  1. generate the synthetic multi-hop world (bridge passage + answer passage + distractors);
  2. train a tiny Fusion-in-Decoder reader on gold passages, then freeze it;
  3. train rerankers with G-Rerank, EMDR, PDist, LOOP, ADist and the no-noise ablation;
  4. write runs/demo/results.md, results.json and plots (recall on indirect passages).

Today the package provides the functional ops (gumbel_jax.ops); see README.md."""


def main() -> int:
    print(PLAN, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
