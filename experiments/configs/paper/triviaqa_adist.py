"""Table "TriviaQA", row "ADist" (run triviaqa_adist).

Paper: no published number for this row is known to us; the cell is ours alone.

    python -m experiments.reproduce --table triviaqa --cell triviaqa_adist \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 2.1 h per seed (10,000 steps at batch 8 over 100
passages; measured on NQ's shape); a TPU v5e-8 about 66 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn.

Needs: the gj_triviaqa dataset (python -m experiments.prepare_data --dataset triviaqa ...),
tqa_reader_large (FiD's released TriviaQA reader) in --models_dir, and Soyoung97/RankT5-base
from the Hugging Face hub.
"""

from experiments.paper import method_row


def get_row():
    return method_row("triviaqa", "triviaqa", "ADist")


def get_config():
    return get_row().experiment
