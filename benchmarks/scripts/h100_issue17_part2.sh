#!/usr/bin/env bash
# Issue 17, second round (2026-11-27): what the first round (h100_issue17.sh) left unmeasured,
# in two device calls, most important first; every run writes its own JSON under $OUT/issue17b
# and has its own time limit, so one overrun cannot lose the rest.
#   PART=1: the trainer's step at batch 32 without and with token packing (--token_capacity
#           0.8, with a profile), the fair PyTorch peer compiled per block (batch 16 and 32,
#           after the consistency check), cached generation against transformers' generate
#           (10 passages).
#           (In the first call, at f193cc4, packing covered the reranker too: out of memory,
#           105 GiB; packing is now the frozen reader's only.)
#   PART=2: the step at batch 32 with the reader's encoder packed (a profile), the peer
#           compiled per block with dynamo's recompile limit raised (batch 16 and 32),
#           reranking throughput against transformers, generation at 100 passages.
#   PART=4: the third round (it replaces PART=3, which never ran: the same runs and the
#           new levers), one device call of at most 600 s (every run stops by
#           DEADLINE, 570 s; a run that would get under 30 s is skipped): our step at
#           batch 32 as the trainer runs it by default; with every lever (both encoders
#           packed, the reranker's at its batch's bucket, and the reader's encoder in FP8:
#           the count of FP8 GEMMs XLA formed is in its JSON); the exact levers alone
#           (packing, no FP8); FP8 alone; the peer compiled per block (batch 16 and 32);
#           generation at 100 passages, the baselines and batch 48.
#   GUMBEL_JAX_COMMIT=$(git rev-parse HEAD) PART=1 bash benchmarks/scripts/h100_issue17_part2.sh
# CPU dry run on tiny models (SLOW stretches the time limits):
#   SIZE=tiny ATTENTION=xla SLOW=6 PART=1 OUT=/tmp/issue17b bash benchmarks/scripts/h100_issue17_part2.sh
set -x -o pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-runs/bench}
SIZE=${SIZE:-paper}
ATTENTION=${ATTENTION:-cudnn}
STEPS=${STEPS:-5}
SLOW=${SLOW:-1}
PART=${PART:-1}
R="$OUT/issue17b"
mkdir -p "$R"
if [ "$SIZE" = paper ]; then B16=16 B32=32 B48=48 GB=8 ROWS=1000
else B16=2 B32=3 B48=4 GB=2 ROWS=32; fi
START=$(date +%s)
# Seconds after START by which every run has stopped (PART=4 fits a 600-s device call).
if [ "$PART" = 4 ]; then DEADLINE=${DEADLINE:-570}; else DEADLINE=${DEADLINE:-100000}; fi
elapsed() { echo "elapsed $(( $(date +%s) - START )) s: $*"; }
limited() {  # limited NAME SECONDS MODULE ARGS...: one benchmark run, its JSON at $R/NAME.json
    local name=$1 limit=$(( $2 * SLOW )) module=$3; shift 3
    local left=$(( DEADLINE * SLOW - ($(date +%s) - START) ))
    if [ "$left" -lt $(( 30 * SLOW )) ]; then echo "SKIPPED (${left} s left): $name"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    timeout "$limit" python3 -m "benchmarks.$module" --out "$R/$name.json" "$@" | tail -3 \
        || echo "FAILED ($?): $name"
    elapsed "$name"
}
step() { local name=$1 limit=$2; shift 2
    limited "$name" "$limit" grerank_step --size "$SIZE" --attention "$ATTENTION" \
        --steps "$STEPS" "$@"; }

if [ "$PART" = 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python3 -c 'import jax, flax, optax, torch, transformers as t; print(jax.__version__, flax.__version__, optax.__version__, torch.__version__, t.__version__, jax.devices())'
    step step_b32 110 --batch "$B32"
    step step_b32_packed 150 --batch "$B32" --token_capacity 0.8 --profile "$R/trace"
    rm -rf "$R/trace"  # large; the summary is in the JSON
    limited torch_compile_blocks 230 torch_reference --size "$SIZE" --batch "$B16" --check \
        --steps "$STEPS" --modes compile_blocks --extra_batches "$B32" \
        --extra_modes compile_blocks
    limited generation_d10 90 generation --size "$SIZE" --dtype bfloat16 \
        --attention "$ATTENTION" --batch "$GB" --docs 10 --max_length 32 --num_beams 1 \
        --steps "$STEPS" --torch
elif [ "$PART" = 4 ]; then
    # --count_kernels compiles an FP8 step before timing it: the timed step's own compile
    # then comes from the persistent compilation cache.
    export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    step step_b32 100 --batch "$B32"
    step step_b32_all_levers 150 --batch "$B32" --token_capacity 0.8 \
        --reranker_packing_bucket 0.05 --reader_fp8 --count_kernels
    step step_b32_packed_both 100 --batch "$B32" --token_capacity 0.8 \
        --reranker_packing_bucket 0.05
    step step_b32_fp8 110 --batch "$B32" --reader_fp8 --count_kernels
    # The peer with what is left (about 190 s): compiled per block only (its eager step
    # was measured on 2026-11-26), batch 16 and 32, after the consistency check.
    limited torch_compile_blocks 200 torch_reference --size "$SIZE" --batch "$B16" --check \
        --steps "$STEPS" --modes compile_blocks --extra_batches "$B32" \
        --extra_modes compile_blocks
    limited generation_d100 100 generation --size "$SIZE" --dtype bfloat16 \
        --attention "$ATTENTION" --batch "$GB" --docs 100 --max_length 32 --num_beams 1 \
        --steps "$STEPS" --torch
    for objective in pdist emdr adist loop; do
        step "scale_${objective}_b32" 90 --batch "$B32" --objective "$objective" \
            --token_capacity 0.8 --reranker_packing_bucket 0.05
    done
    step scale_g_rerank_b48 110 --batch "$B48" --token_capacity 0.8 --reranker_packing_bucket 0.05
else
    step step_b32_packed 130 --batch "$B32" --token_capacity 0.8 --profile "$R/trace"
    rm -rf "$R/trace"
    limited torch_compile_blocks_b16_b32 200 torch_reference --size "$SIZE" --batch "$B16" \
        --steps "$STEPS" --modes compile_blocks --extra_batches "$B32" \
        --extra_modes compile_blocks
    limited rerank 70 rerank --size "$SIZE" --dtype bfloat16 --attention "$ATTENTION" \
        --rows "$ROWS" --token_capacity 0.8 --steps 10 --torch
    limited generation_d100 90 generation --size "$SIZE" --dtype bfloat16 \
        --attention "$ATTENTION" --batch "$GB" --docs 100 --max_length 32 --num_beams 1 \
        --steps "$STEPS" --torch
fi
ls -la "$R"
