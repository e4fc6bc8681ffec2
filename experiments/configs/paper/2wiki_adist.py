"""Table "2WikiMultiHopQA", row "ADist" (run 2wiki_adist).

Paper: no published number for this row is known to us; the cell is ours alone.

    python -m experiments.reproduce --table 2wiki --cell 2wiki_adist \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 14 min per seed (3,000 steps at batch 32; estimated
from the HotpotQA step); a TPU v5e-8 about 7 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn.

Needs: the gj_two_wiki dataset (python -m experiments.prepare_data --dataset 2wiki ...),
fid-large-2wiki (FiD-Large on 2WikiMultiHopQA, built by --table readers) in --models_dir, and
Soyoung97/RankT5-base from the Hugging Face hub.
"""

from experiments.paper import method_row


def get_row():
    return method_row("2wiki", "2wiki", "ADist")


def get_config():
    return get_row().experiment
