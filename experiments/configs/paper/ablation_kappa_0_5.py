"""Table "ablations (HotpotQA, G-Rerank)", row "kappa = 0.5" (run hotpotqa_g_rerank_kappa0.5).

Paper: no published number for this row is known to us; the cell is ours alone.

    python -m experiments.reproduce --table ablations --cell hotpotqa_g_rerank_kappa0.5 \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 14 min per seed (3,000 steps at batch 32; the step
time was measured); a TPU v5e-8 about 7 min per seed (estimate; python -m
experiments.costs). On GPUs add --set model.attention=cudnn.

Needs: the gj_hotpotqa dataset (python -m experiments.prepare_data --dataset hotpotqa ...),
fid-large-hotpotqa (FiD-Large on HotpotQA, built by --table readers) in --models_dir, and
Soyoung97/RankT5-base from the Hugging Face hub. The paper reports its ablations
qualitatively (the noise and a pretrained start help).
"""

from experiments.paper import ablation_row


def get_row():
    return ablation_row("kappa = 0.5", "hotpotqa_g_rerank_kappa0.5", objective={"kappa": 0.5})


def get_config():
    return get_row().experiment
