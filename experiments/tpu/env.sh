# shellcheck shell=bash disable=SC2034  # (settings read by the scripts that source this)
# Settings shared by the TPU scripts (sourced by each); override any of them in the
# environment. `bash experiments/tpu/info.sh` prints what they resolve to.
#   TPU_NAME        the TPU VM or pod slice                       (default gumbel-jax)
#   ACCELERATOR     v5litepod-8 (default), v4-8, v5p-8, v6e-8: one host each;
#                   v4-32, v5litepod-16, v5p-16, v6e-16, ...: a pod slice (several hosts)
#   ZONE, RUNTIME   default: the generation's row below
#   BUCKET          gs://NAME (a trailing slash is ignored): tfds/ and models/ for
#                   copy_data.sh; runs/ is the run folder on pod slices and Spot VMs
#   WORKDIR         the run folder, as the workers see it. One on-demand host: ~/gj_runs
#                   on its disk (beside the code folder ~/gumbel-jax, which setup.sh
#                   replaces, never inside it). A pod slice or a Spot VM: $BUCKET/runs,
#                   written as gs:// paths by orbax (no gcsfuse mount).
#   SPOT=1          Spot capacity through a queued resource (create.sh, delete.sh,
#                   resume.sh); QUEUED_RESOURCE names it (default $TPU_NAME-qr)
#   MESH            reproduce's --mesh (default -1,1,1: data parallel over every chip)
#   SEEDS           seeds per cell (default 3)
#   PYTHON_VERSION  the uv-managed Python setup.sh installs (default 3.11; >= 3.11)
#   DRY_RUN=1       print the commands instead of running them
#
# One row per generation (Cloud TPU docs: the generation's page for its configurations,
# "TPU software versions", "TPU regions and zones"):
#   generation  type suffix counts  one host holds up to  runtime (--version)  default zone
#   v4          TensorCores, 2/chip v4-8 = 4 chips        tpu-ubuntu2204-base  us-central2-b
#   v5p         TensorCores, 2/chip v5p-8 = 4 chips       v2-alpha-tpuv5       us-east5-a
#   v5e         chips               v5litepod-8 = 8 chips v2-alpha-tpuv5-lite  us-west4-a
#   v6e         chips               v6e-8 = 8 chips       v2-alpha-tpuv6e      us-east5-b
# A larger type is a pod slice of 4-chip TPU VMs (v5e/v6e pages count 8-chip physical hosts;
# nothing here depends on the VM count: --worker=all reaches every one). JAX sees one device
# per chip on all four (a v4 / v5p chip's two TensorCores are one megacore device), so a
# table's global batch must divide by the chips (launch.sh checks, per table).
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

TPU_NAME=${TPU_NAME:-gumbel-jax}
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
SIZE=${ACCELERATOR##*-}
case "$SIZE" in
  '' | *[!0-9]*) die "ACCELERATOR=$ACCELERATOR: expected a type such as v5litepod-8 or v4-32" ;;
esac
case "$ACCELERATOR" in
  v4-*)
    GENERATION=v4 CORES_PER_CHIP=2 SINGLE_HOST_CHIPS=4
    DEFAULT_RUNTIME=tpu-ubuntu2204-base DEFAULT_ZONE=us-central2-b ;;
  v5p-*)
    GENERATION=v5p CORES_PER_CHIP=2 SINGLE_HOST_CHIPS=4
    DEFAULT_RUNTIME=v2-alpha-tpuv5 DEFAULT_ZONE=us-east5-a ;;
  v5litepod-*)
    GENERATION=v5e CORES_PER_CHIP=1 SINGLE_HOST_CHIPS=8
    DEFAULT_RUNTIME=v2-alpha-tpuv5-lite DEFAULT_ZONE=us-west4-a ;;
  v6e-*)
    GENERATION=v6e CORES_PER_CHIP=1 SINGLE_HOST_CHIPS=8
    DEFAULT_RUNTIME=v2-alpha-tpuv6e DEFAULT_ZONE=us-east5-b ;;
  *) die "ACCELERATOR=$ACCELERATOR: unknown generation (expected v4-N, v5p-N, v5litepod-N or v6e-N)" ;;
esac
if [ "$SIZE" -lt "$CORES_PER_CHIP" ] || [ $((SIZE % CORES_PER_CHIP)) != 0 ]; then
  die "ACCELERATOR=$ACCELERATOR: a $GENERATION type counts TensorCores, $CORES_PER_CHIP per chip"
fi
CHIPS=$((SIZE / CORES_PER_CHIP))
DEVICES=$CHIPS  # JAX devices in the slice: one per chip
if [ "$CHIPS" -le "$SINGLE_HOST_CHIPS" ]; then
  MULTIHOST=0 HOSTS=1 CHIPS_PER_HOST=$CHIPS
else  # the TPU VMs of a multi-host slice hold 4 chips each, on all four generations
  MULTIHOST=1 CHIPS_PER_HOST=4 HOSTS=$((CHIPS / 4))
fi
ZONE=${ZONE:-$DEFAULT_ZONE}
RUNTIME=${RUNTIME:-$DEFAULT_RUNTIME}
case "${SPOT:-0}" in 0 | '') SPOT=0 ;; *) SPOT=1 ;; esac
QUEUED_RESOURCE=${QUEUED_RESOURCE:-$TPU_NAME-qr}
MESH=${MESH:--1,1,1}
SEEDS=${SEEDS:-3}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
case "$PYTHON_VERSION" in
  3.1[1-9] | 3.1[1-9].* | 3.[2-9][0-9] | 3.[2-9][0-9].*) ;;
  *) die "PYTHON_VERSION=$PYTHON_VERSION: jax >= 0.10.2 needs Python >= 3.11" ;;
esac

BUCKET=${BUCKET:-}
if [ -n "$BUCKET" ]; then
  case "$BUCKET" in
    gs://*) ;;
    *://*) die "BUCKET=$BUCKET: expected gs://NAME" ;;
    *) BUCKET=gs://$BUCKET ;;
  esac
  while [ "${BUCKET%/}" != "$BUCKET" ]; do BUCKET=${BUCKET%/}; done
  if [ "$BUCKET" = gs: ]; then die "BUCKET: expected gs://NAME"; fi
fi

REMOTE_DIR=gumbel-jax  # the code folder, in each worker's home; setup.sh replaces it
# Runs must outlive the VM on a pod slice (every host writes the same run) and on a Spot VM
# (a preempted one is deleted with its disk): there they live in the bucket.
if [ "$MULTIHOST" = 1 ] || [ "$SPOT" = 1 ]; then
  RUNS_IN_BUCKET=1
  WORKDIR=${WORKDIR:-${BUCKET:+$BUCKET/runs}}
else
  RUNS_IN_BUCKET=0
  WORKDIR=${WORKDIR:-\~/gj_runs}  # "~" expands on the worker, not here
fi
if [ -n "$WORKDIR" ]; then
  while [ "${WORKDIR%/}" != "$WORKDIR" ] && [ "${WORKDIR%/}" != gs:/ ]; do WORKDIR=${WORKDIR%/}; done
  case "$WORKDIR" in
    *[!A-Za-z0-9_./~:@+=-]*) die "WORKDIR=$WORKDIR: use letters, digits and _ . / ~ : @ + = - only" ;;
  esac
  # shellcheck disable=SC2088  # a literal "~", expanded on the worker
  case "$WORKDIR" in
    gs://*) ;;
    *://*) die "WORKDIR=$WORKDIR: a run folder URL must be gs://" ;;
    "~/$REMOTE_DIR" | "~/$REMOTE_DIR/"* | /home/*/"$REMOTE_DIR" | /home/*/"$REMOTE_DIR"/*)
      die "WORKDIR=$WORKDIR lies in the code folder ~/$REMOTE_DIR, which setup.sh deletes and recreates: keep runs outside it (default ~/gj_runs)" ;;
    "~/"* | /*) ;;
    *) die "WORKDIR=$WORKDIR: give an absolute path (~/... or /...) or gs://...; a relative one would lie in the code folder" ;;
  esac
fi

shell_word() {  # one argument as the shell reads it back: bare, or in single quotes
  case "$1" in
    '' | *[!A-Za-z0-9_./=:,@+%^-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}

run() {  # run (or, with DRY_RUN=1, print) one command
  if [ "${DRY_RUN:-0}" = 1 ]; then
    local word line=""
    for word in "$@"; do line+="${line:+ }$(shell_word "$word")"; done
    echo "$line"
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER COMMAND: run COMMAND on worker WORKER (or all, at once)
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

need_bucket() {
  if [ -z "$BUCKET" ]; then die "set BUCKET=gs://... (see experiments/tpu/env.sh)"; fi
}

check_workdir() {  # the run folder exists as a setting and survives what it must
  if [ -z "$WORKDIR" ]; then
    die "a pod slice or Spot VM keeps its runs in the bucket: set BUCKET=gs://... (or WORKDIR=gs://...)"
  fi
  if [ "$RUNS_IN_BUCKET" = 1 ]; then
    case "$WORKDIR" in
      gs://*) ;;
      *) if [ "$MULTIHOST" = 1 ]; then
           die "WORKDIR=$WORKDIR: every host of $ACCELERATOR writes the same run; use gs://..."
         else
           die "WORKDIR=$WORKDIR: a preempted Spot VM is deleted with its disk; use gs://..."
         fi ;;
    esac
  fi
}

table_batch() {  # the global batches of a table's configs (experiments/paper.py), spaced
  case "$1" in
    nq | triviaqa) echo 8 ;;
    hotpotqa | hotpotqa_indirect | musique | 2wiki | bge | ablations) echo 32 ;;
    cepe) echo "8 2" ;;  # its HotpotQA rows (8 x 10 contexts) and NQ rows (2 x 100)
    *) echo "" ;;
  esac
}

ALL_TABLES="hotpotqa hotpotqa_indirect musique 2wiki bge nq triviaqa cepe ablations"

mesh_batch_shards() {  # mesh_batch_shards DATA,FSDP,TENSOR: data x fsdp on this slice's devices
  local data fsdp tensor rest known
  IFS=, read -r data fsdp tensor rest <<< "$1"
  for value in "$data" "$fsdp" "$tensor"; do
    case "$value" in -1 | [1-9] | [1-9][0-9] | [1-9][0-9][0-9]) ;; *) return 1 ;; esac
  done
  if [ -n "$rest" ]; then return 1; fi
  known=1
  for value in "$data" "$fsdp" "$tensor"; do
    if [ "$value" != -1 ]; then known=$((known * value)); fi
  done
  if [ $((DEVICES % known)) != 0 ]; then return 1; fi
  if [ "$data" = -1 ]; then data=$((DEVICES / known)); fi
  if [ "$fsdp" = -1 ]; then fsdp=$((DEVICES / known)); fi
  if [ "$tensor" = -1 ]; then tensor=$((DEVICES / known)); fi
  if [ $((data * fsdp * tensor)) != "$DEVICES" ]; then return 1; fi
  echo $((data * fsdp))
}

gcd() { local a=$1 b=$2 t; while [ "$b" != 0 ]; do t=$((a % b)); a=$b; b=$t; done; echo "$a"; }

check_batches() {  # check_batches TABLE MESH [BATCH]: each table's global batch splits
  local table=$1 mesh=$2 override=${3:-} shards tables name batch bad=0 common tensor larger
  if ! shards=$(mesh_batch_shards "$mesh"); then
    die "mesh $mesh does not fit the $DEVICES devices of $ACCELERATOR (DATA,FSDP,TENSOR; -1 takes the rest)"
  fi
  if [ "$table" = all ]; then tables=$ALL_TABLES; else tables=$table; fi
  for name in $tables; do
    for batch in ${override:-$(table_batch "$name")}; do
      if [ $((batch % shards)) = 0 ]; then continue; fi
      bad=1
      common=$(gcd "$batch" "$DEVICES")
      tensor=$((DEVICES / common))
      larger=$((batch * shards / $(gcd "$batch" "$shards")))
      echo "error: table $name: its global batch $batch does not split over the $shards batch shards" \
           "(data x fsdp) of mesh $mesh on $ACCELERATOR ($DEVICES devices). Either keep the" \
           "paper's batch and split each model over $tensor chips (tensor parallel):" \
           "MESH=-1,1,$tensor bash experiments/tpu/launch.sh $name ...; or change the batch" \
           "(not the paper's setting): bash experiments/tpu/launch.sh $name ..." \
           "--set data.batch_size=$larger" >&2
    done
  done
  if [ "$bad" = 1 ]; then
    if [ "$table" = all ]; then echo "(launch the other tables with 'all' replaced by their names)" >&2; fi
    exit 2
  fi
}
