# Settings shared by the TPU scripts; override any of them in the environment.
#   TPU_NAME     the TPU VM (or pod slice) name             (default gumbel-jax)
#   ZONE         its zone                                   (default us-west4-a)
#   ACCELERATOR  v5litepod-8, v4-8, v5litepod-16 (a pod), ... (default v5litepod-8)
#   RUNTIME      the TPU software version: v2-alpha-tpuv5-lite for v5e,
#                tpu-ubuntu2204-base for v4                 (default: from ACCELERATOR)
#   BUCKET       gs://... holding tfds/ (prepared data) and models/ (local checkpoints);
#                results are copied to $BUCKET/runs
#   WORKDIR      run folder on the workers: local disk on one host; on a pod slice it
#                must be shared, so setup.sh mounts $BUCKET/runs there (gcsfuse)
#   DRY_RUN=1    print the gcloud commands instead of running them
set -euo pipefail
TPU_NAME=${TPU_NAME:-gumbel-jax}
ZONE=${ZONE:-us-west4-a}
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
case "$ACCELERATOR" in
  v5litepod-*) DEFAULT_RUNTIME=v2-alpha-tpuv5-lite ;;
  *) DEFAULT_RUNTIME=tpu-ubuntu2204-base ;;
esac
RUNTIME=${RUNTIME:-$DEFAULT_RUNTIME}
BUCKET=${BUCKET:-}
# Chips per host: 8 on v5e hosts, 4 on v4 hosts; more chips than that = several hosts.
CHIPS=${ACCELERATOR##*-}
case "$ACCELERATOR" in v5litepod-*) PER_HOST=8 ;; *) PER_HOST=4 ;; esac
if [ "$CHIPS" -gt "$PER_HOST" ]; then MULTIHOST=1; else MULTIHOST=0; fi
if [ "$MULTIHOST" = 1 ]; then WORKDIR=${WORKDIR:-/mnt/gj_runs}; else WORKDIR=${WORKDIR:-runs/paper}; fi
REMOTE_DIR=gumbel-jax  # the project's folder in each worker's home

run() {  # run (or, with DRY_RUN=1, print) one command
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_workers() {  # on_workers WORKER COMMAND: run COMMAND on worker WORKER (or all)
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

need_bucket() {
  if [ -z "$BUCKET" ]; then echo "error: set BUCKET=gs://... (see experiments/tpu/env.sh)" >&2; exit 2; fi
}
