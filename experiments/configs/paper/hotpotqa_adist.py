"""Table "HotpotQA", row "ADist" (run hotpotqa_adist).

Paper: Mining R@5 71.3, Mining NDCG@5 72.1, Reranker R@5 71.3, EM 57.0, F1 71.5.

    python -m experiments.reproduce --table hotpotqa --cell hotpotqa_adist \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 14 min per seed (3,000 steps at batch 32; the step
time was measured); a TPU v5e-8 about 7 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn.

Needs: the gj_hotpotqa dataset (python -m experiments.prepare_data --dataset hotpotqa ...),
fid-large-hotpotqa (FiD-Large on HotpotQA, built by --table readers) in --models_dir, and
Soyoung97/RankT5-base from the Hugging Face hub.
"""

from experiments.paper import method_row


def get_row():
    return method_row("hotpotqa", "hotpotqa", "ADist",
                      paper={"Mining R@5": 71.3, "Mining NDCG@5": 72.1, "Reranker R@5": 71.3,
                             "EM": 57.0, "F1": 71.5})


def get_config():
    return get_row().experiment
