#!/usr/bin/env bash
# One device call that re-times the trainer's own step after the engine fix (issue 13): the
# benchmark now builds its models through training.factory, so ModelConfig.attention=cudnn
# puts cuDNN attention in every attention layer, as training does. Writes JSONs to $OUT.
#   GUMBEL_JAX_COMMIT=$(git rev-parse HEAD) bash benchmarks/scripts/h100_trainer_step.sh
set -x
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-runs/bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'
# The paper shape (FiD-Large + RankT5-base, 10 x 256, answers 32, k 5, bf16), batch 32.
python3 -m benchmarks.grerank_step --size paper --batch 32 --attention cudnn --count_kernels \
    --measure_peak --out "$OUT/trainer_step_cudnn_b32.json" | tail -25
python3 -m benchmarks.grerank_step --size paper --batch 16 --attention cudnn \
    --out "$OUT/trainer_step_cudnn_b16.json" | tail -8
# cuDNN's bias gradient against XLA's (tests marked gpu).
python3 -m pytest -q -p no:cacheprovider tests/models/test_attention.py -m gpu
