"""Table "MuSiQue", row "LOOP" (run musique_loop).

Paper: no published number for this row is known to us; the cell is ours alone.

    python -m experiments.reproduce --table musique --cell musique_loop \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 28 min per seed (3,000 steps at batch 32 over 20
passages; estimated from FLOPs); a TPU v5e-8 about 14 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn. LOOP reads the passages n + 1
times per step (forward only): its step took 1.53x G-Rerank's on HotpotQA's shape (H100,
measured), and grows with the number of passages.

Needs: the gj_musique dataset (python -m experiments.prepare_data --dataset musique ...),
fid-large-musique (FiD-Large on MuSiQue, built by --table readers) in --models_dir, and
Soyoung97/RankT5-base from the Hugging Face hub.
"""

from experiments.paper import method_row


def get_row():
    return method_row("musique", "musique", "LOOP")


def get_config():
    return get_row().experiment
