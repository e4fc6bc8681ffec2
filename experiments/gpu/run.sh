#!/usr/bin/env bash
# The paper grid on a GPU host, or on each node of a multi-node GPU cluster.
#   bash experiments/gpu/run.sh hotpotqa [reproduce arguments]
# One host: all its GPUs form one data-parallel mesh. Several nodes: run this on every node
# with NUM_NODES, NODE_RANK and COORDINATOR=host0:port (under SLURM or Open MPI, set
# NUM_NODES alone: jax.distributed finds the rest). The workdir must be shared by all nodes.
# Environment: DATA_DIR (~/tfds), MODELS_DIR (~/models), WORKDIR (runs/paper), SEEDS (3),
# DRY_RUN=1 prints the command.
set -euo pipefail
TABLE=${1:?usage: run.sh TABLE [reproduce arguments]}
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
COMMAND=("$PYTHON" -m experiments.reproduce --table "$TABLE" --data_dir "${DATA_DIR:-$HOME/tfds}"
         --models_dir "${MODELS_DIR:-$HOME/models}" --workdir "${WORKDIR:-runs/paper}"
         --seeds "${SEEDS:-3}" --mesh -1,1,1 --set model.attention=cudnn)
if [ "${NUM_NODES:-1}" -gt 1 ]; then
  COMMAND+=(--distributed)
  if [ -n "${COORDINATOR:-}" ]; then
    COMMAND+=(--coordinator "$COORDINATOR" --num_processes "$NUM_NODES"
              --process_id "${NODE_RANK:?set NODE_RANK on each node}")
  fi
fi
COMMAND+=("$@")
cd "$ROOT"
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${COMMAND[@]}"; echo; else exec "${COMMAND[@]}"; fi
