#!/usr/bin/env bash
# Issue 17 in one device call, most important first, each run under its own time limit so one
# overrun cannot lose the rest (every run writes its own JSON under $OUT/issue17):
#   1. the trainer's own step at the paper shape, batch 32, both levers on (the trainer's
#      default), with a profile; both levers off (--no_fold --dense_bias); the fold alone
#      (--dense_bias); batch 16 with the levers;
#   2. the fair PyTorch peer: consistency check, eager batch 16, the batch-32 attempt,
#      torch.compile batch 16 (compile time reported);
#   3. as much of the scaling story as fits: 20 and 100 candidates, the baselines (PDist
#      included), a larger batch.
#   GUMBEL_JAX_COMMIT=$(git rev-parse HEAD) bash benchmarks/scripts/h100_issue17.sh
# CPU dry run of the same commands on tiny models (SLOW stretches the time limits):
#   SIZE=tiny ATTENTION=xla SLOW=6 OUT=/tmp/issue17 bash benchmarks/scripts/h100_issue17.sh
set -x -o pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-runs/bench}
SIZE=${SIZE:-paper}
ATTENTION=${ATTENTION:-cudnn}
STEPS=${STEPS:-5}
SLOW=${SLOW:-1}
R="$OUT/issue17"
mkdir -p "$R"
# Tiny sizes for the dry run; the bf16 matmul peak only on the device (minutes on a CPU).
if [ "$SIZE" = paper ]; then B16=16 B32=32 B8=8 B4=4 B48=48 PEAK=--measure_peak
else B16=2 B32=3 B8=2 B4=1 B48=4 PEAK=; fi
START=$(date +%s)
elapsed() { echo "elapsed $(( $(date +%s) - START )) s: $*"; }
step() {  # step NAME SECONDS ARGS...: one grerank_step run, its JSON at $R/NAME.json
    local name=$1 limit=$(( $2 * SLOW )); shift 2
    timeout "$limit" python3 -m benchmarks.grerank_step --size "$SIZE" --attention "$ATTENTION" \
        --steps "$STEPS" --out "$R/$name.json" "$@" | tail -4 || echo "FAILED ($?): $name"
    elapsed "$name"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c 'import jax, flax, optax, torch, transformers as t; print(jax.__version__, flax.__version__, optax.__version__, torch.__version__, t.__version__, jax.devices())'

# 1. Ours. Should the row-lengths kernel call fail on this card, the later runs go on with
#    the fold alone (LEVERS=--dense_bias) and the fold-only run takes the profile.
step step_b32 150 --batch "$B32" --profile "$R/trace" $PEAK
LEVERS= FOLD_PROFILE=
[ -f "$R/step_b32.json" ] || { LEVERS=--dense_bias; FOLD_PROFILE="--profile $R/trace"; }
rm -rf "$R/trace"  # large; the summary is in the JSON
step step_b32_before 100 --batch "$B32" --no_fold --dense_bias
step step_b32_fold_only 100 --batch "$B32" --dense_bias $FOLD_PROFILE
rm -rf "$R/trace"
step step_b16 80 --batch "$B16" $LEVERS

# 2. The fair PyTorch peer: eager 16, the batch-32 attempt, then torch.compile 16.
timeout $(( 300 * SLOW )) python3 -m benchmarks.torch_reference --size "$SIZE" --batch "$B16" \
    --check --steps "$STEPS" --modes eager compile --extra_batches "$B32" --extra_modes eager \
    --out "$R/torch_b16.json" | tail -4 || echo "FAILED ($?): torch"
elapsed torch

# 3. Scaling, as far as the call's time goes (JSON names start with scale_).
step scale_g_rerank_d20_b16 90 --batch "$B16" --docs 20 $LEVERS
step scale_pdist_b32 90 --batch "$B32" --objective pdist $LEVERS
step scale_g_rerank_d100_b8 120 --batch "$B8" --docs 100 --remat $LEVERS
step scale_emdr_b32 90 --batch "$B32" --objective emdr $LEVERS
step scale_g_rerank_b48 100 --batch "$B48" $LEVERS
step scale_adist_b32 90 --batch "$B32" --objective adist $LEVERS
step scale_loop_b32 90 --batch "$B32" --objective loop $LEVERS
ls -la "$R"
