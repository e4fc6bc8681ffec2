"""Table "2WikiMultiHopQA", row "LOOP" (run 2wiki_loop).

Paper: Mining R@5 80.4, EM 71.6, F1 76.9.

    python -m experiments.reproduce --table 2wiki --cell 2wiki_loop \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 14 min per seed (3,000 steps at batch 32; estimated
from the HotpotQA step); a TPU v5e-8 about 7 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn. LOOP reads the passages n + 1
times per step (forward only): its step took 1.53x G-Rerank's on HotpotQA's shape (H100,
measured), and grows with the number of passages.

Needs: the gj_two_wiki dataset (python -m experiments.prepare_data --dataset 2wiki ...),
fid-large-2wiki (FiD-Large on 2WikiMultiHopQA, built by --table readers) in --models_dir, and
Soyoung97/RankT5-base from the Hugging Face hub.
"""

from experiments.paper import method_row


def get_row():
    return method_row("2wiki", "2wiki", "LOOP", paper={"Mining R@5": 80.4, "EM": 71.6, "F1": 76.9})


def get_config():
    return get_row().experiment
