"""Table "HotpotQA with the BGE-base reranker", row "EMDR" (run bge_hotpotqa_emdr).

Paper: no published number for this row is known to us; the cell is ours alone.

    python -m experiments.reproduce --table bge --cell bge_hotpotqa_emdr \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB, about 14 min per seed (3,000 steps at batch 32; estimated
from FLOPs: XLM-R base is an encoder only); a TPU v5e-8 about 7 min per seed (estimate;
python -m experiments.costs). On GPUs add --set model.attention=cudnn.

Needs: the gj_hotpotqa dataset (python -m experiments.prepare_data --dataset hotpotqa ...),
fid-large-hotpotqa (FiD-Large on HotpotQA, built by --table readers) in --models_dir, and
BAAI/bge-reranker-base from the Hugging Face hub.
"""

from experiments.paper import BGE, method_row


def get_row():
    return method_row("bge", "hotpotqa", "EMDR", reranker=BGE, prefix="bge_")


def get_config():
    return get_row().experiment
