"""Reader "fid-large-musique": FiD-Large trained on MuSiQue (answerable) from google-t5/t5-large,
the reader the musique rows of the paper grid read (no such reader is public).

    python -m experiments.train_reader --config experiments/configs/readers/fid_large_musique.py \
        --workdir runs/readers/fid-large-musique --export ~/models/fid-large-musique \
        --set data.data_dir=~/tfds

or, as the first stage of the grid (exports to --models_dir/fid-large-musique):

    python -m experiments.reproduce --table readers --cell fid-large-musique \
        --data_dir ~/tfds --models_dir ~/models --workdir runs/paper

Recipe (experiments.paper.reader_experiment): FiD's for its large readers
(facebookresearch/FiD README): AdamW, learning rate 5e-5, 1,000 warm-up steps then linear
decay to zero, weight decay 0.01, clipping 1.0, T5's dropout 0.1 (t5-large's config.json;
--set dropout_rate=R), the target drawn at each step among the question's answers (FiD's
random.choice), 250 tokens per (question, passage) text, 64 questions per step; every
candidate of a question read together (MuSiQue's pool of 20 paragraphs, its 2-4 supporting
ones among them), so the gold passages are always read; answers cut at 32 tokens (the grid's).
Ours: 3,000 steps (about 10 epochs of 19,938 training questions), bfloat16 compute with
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

Needs: the gj_musique dataset (python -m experiments.prepare_data --dataset musique ...) and
google-t5/t5-large from the Hugging Face hub.
"""

from experiments.paper import reader_row


def get_row():
    return reader_row("musique")


def get_config():
    return get_row().experiment
