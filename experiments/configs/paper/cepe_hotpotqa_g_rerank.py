"""Table "CEPE-Llama2-7B reader", row "HotpotQA G-Rerank" (run cepe_hotpotqa_g_rerank).

Paper: the paper reports its methods with CEPE-Llama2-7B as the reader, but its exact CEPE
rows are not in our notes; the cell is ours alone.

    python -m experiments.reproduce --table cepe --cell cepe_hotpotqa_g_rerank \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper --seeds 3

Hardware and time: one H100 80GB (an estimate, not measured: 3000 steps at batch 8 over 10
contexts of 256 tokens, about 66 TFLOP a step, python -m experiments.costs --cepe); on a TPU
see docs/readers.md (CEPE section). On GPUs add --set model.attention=cudnn.

Needs: the gj_hotpotqa dataset (python -m experiments.prepare_data --dataset hotpotqa ...),
and hyen/CEPE-LLaMA-2-7B (34 GB of float32 shards, streamed into 17 GB of bfloat16) and
Soyoung97/RankT5-base from the Hugging Face hub.
"""

from experiments.paper import cepe_row


def get_row():
    return cepe_row("hotpotqa", "G-Rerank")


def get_config():
    return get_row().experiment
