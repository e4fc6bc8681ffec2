"""Reader "fid-large-2wiki": FiD-Large trained on 2WikiMultiHopQA from google-t5/t5-large,
the reader the 2wiki rows of the paper grid read (no such reader is public).

    python -m experiments.train_reader --config experiments/configs/readers/fid_large_2wiki.py \
        --workdir runs/readers/fid-large-2wiki --export ~/models/fid-large-2wiki \
        --set data.data_dir=~/tfds

or, as the first stage of the grid (exports to --models_dir/fid-large-2wiki):

    python -m experiments.reproduce --table readers --cell fid-large-2wiki \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper

Recipe (experiments.paper.reader_experiment): FiD's for its large readers
(facebookresearch/FiD README): AdamW, learning rate 5e-5, 1,000 warm-up steps then linear
decay to zero, weight decay 0.01, clipping 1.0, T5's dropout 0.1 (t5-large's config.json;
--set dropout_rate=R), the target drawn at each step among the question's answers (FiD's
random.choice), 250 tokens per (question, passage) text, 64 questions per step; every
candidate of a question read together (2Wiki's pool of 10 paragraphs, its supporting ones
among them), so the gold passages are always read; answers cut at 32 tokens (the grid's).
Ours: 6,000 steps (about 2.3 epochs of 167,454 training questions), bfloat16 compute with
float32 parameters, per-layer remat, held-out EM every 500 steps choosing the exported
checkpoint (greedy decoding). Which of these the G-Rerank paper used for its FiD-Large readers
is not published. Start elsewhere with --set model.reader=google/flan-t5-large (or
google/t5-v1_1-large, a folder, or one of FiD's released checkpoints with
model.reader_tokenizer=google-t5/t5-large). Where ours still differs from FiD's
recipe, and why: docs/reproduce.md, "The readers stage".

Hardware and time (estimates, python -m experiments.costs: no reader has been trained at
this size here): about 2.0 h on one H100 80GB, 1.2 h on a TPU v5e-8 (--mesh 1,8,1: fsdp
shards the ~9 GB of parameters and AdamW state), 1.8 h on a TPU v4-8, plus the held-out
evaluations. On GPUs add --set model.attention=cudnn.

Needs: the gj_two_wiki dataset (python -m experiments.prepare_data --dataset 2wiki ...) and
google-t5/t5-large from the Hugging Face hub.
"""

from experiments.paper import reader_row


def get_row():
    return reader_row("2wiki")


def get_config():
    return get_row().experiment
