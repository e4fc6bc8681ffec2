"""Table "HotpotQA", row "G-Rerank" (run hotpotqa_g_rerank).

Paper: Mining R@5 83.3, Mining NDCG@5 84.7, Reranker R@5 84.4, EM 61.1, F1 76.3.

    python -m experiments.reproduce --table hotpotqa --cell hotpotqa_g_rerank \
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
    return method_row("hotpotqa", "hotpotqa", "G-Rerank",
                      paper={"Mining R@5": 83.3, "Mining NDCG@5": 84.7, "Reranker R@5": 84.4,
                             "EM": 61.1, "F1": 76.3})


def get_config():
    return get_row().experiment
