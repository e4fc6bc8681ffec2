#!/usr/bin/env bash
# The paper grid on a GPU host, or on every GPU of a multi-node cluster.
#   bash experiments/gpu/run.sh hotpotqa [reproduce arguments]
# One host: one process, all its GPUs in one data-parallel mesh.
# SLURM / Open MPI: JAX gives each process ONE GPU, the one of its local rank
# (SLURM_LOCALID / OMPI_COMM_WORLD_LOCAL_RANK), so start one task per GPU, each seeing all
# of its node's GPUs; jax.distributed finds the coordinator itself:
#   srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 bash experiments/gpu/run.sh hotpotqa
#   mpirun -np 16 --npernode 8 bash experiments/gpu/run.sh hotpotqa
# A run with fewer tasks than GPUs on a node is refused (it would leave GPUs idle).
# Other clusters: one process per node with all its GPUs; run this on every node with
# NUM_NODES, NODE_RANK and COORDINATOR=host0:port. The workdir must be shared by all nodes.
# Environment: DATA_DIR (~/tfds), MODELS_DIR (~/models), WORKDIR (runs/paper), SEEDS (3),
# GPUS_PER_NODE (default: CUDA_VISIBLE_DEVICES, else nvidia-smi), DRY_RUN=1 prints the
# command.
set -euo pipefail
TABLE=${1:?usage: run.sh TABLE [reproduce arguments]}
shift
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
COMMAND=("$PYTHON" -m experiments.reproduce --table "$TABLE" --data_dir "${DATA_DIR:-$HOME/tfds}"
         --models_dir "${MODELS_DIR:-$HOME/models}" --workdir "${WORKDIR:-runs/paper}"
         --seeds "${SEEDS:-3}" --mesh "-1,1,1" --set model.attention=cudnn)

die() { echo "error: $*" >&2; exit 2; }

gpus_on_this_node() {  # GPUs this process can see ("" when unknown)
  if [ -n "${GPUS_PER_NODE:-}" ]; then
    echo "$GPUS_PER_NODE"
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    local ids
    IFS=, read -r -a ids <<< "$CUDA_VISIBLE_DEVICES"
    echo "${#ids[@]}"
  elif command -v nvidia-smi > /dev/null 2>&1; then
    nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true
  fi
}

LAUNCHER="" TASKS_HERE=""
if [ "${SLURM_NTASKS:-1}" -gt 1 ] && [ -n "${SLURM_LOCALID:-}" ]; then
  LAUNCHER=SLURM
  TASKS_HERE=${SLURM_NTASKS_PER_NODE:-}
  if [ -z "$TASKS_HERE" ] && [ -n "${SLURM_TASKS_PER_NODE:-}" ]; then
    TASKS_HERE=${SLURM_TASKS_PER_NODE%%[!0-9]*}  # "8(x2)" -> 8
  fi
  EXAMPLE="srun --ntasks-per-node=GPUS --gpus-per-node=GPUS"
elif [ "${OMPI_COMM_WORLD_SIZE:-1}" -gt 1 ]; then
  LAUNCHER="Open MPI"
  TASKS_HERE=${OMPI_COMM_WORLD_LOCAL_SIZE:-}
  EXAMPLE="mpirun --npernode GPUS"
fi
if [ -n "$LAUNCHER" ]; then
  GPUS=$(gpus_on_this_node)
  if [ -n "$GPUS" ] && [ -n "$TASKS_HERE" ] && [ "$GPUS" != "$TASKS_HERE" ]; then
    die "$LAUNCHER started $TASKS_HERE task(s) on this node, which has $GPUS GPU(s) visible: \
JAX gives each task the one GPU of its local rank, so start one task per GPU, each seeing \
all of the node's GPUs (${EXAMPLE//GPUS/$GPUS})"
  fi
  COMMAND+=(--distributed)  # coordinator, process ids and local GPU from the launcher
elif [ "${NUM_NODES:-1}" -gt 1 ]; then
  if [ -z "${COORDINATOR:-}" ]; then die "NUM_NODES=$NUM_NODES: set COORDINATOR=host0:port (or start with srun / mpirun)"; fi
  if [ -z "${NODE_RANK:-}" ]; then die "NUM_NODES=$NUM_NODES: set NODE_RANK on each node"; fi
  COMMAND+=(--distributed --coordinator "$COORDINATOR" --num_processes "$NUM_NODES"
            --process_id "$NODE_RANK")
fi
COMMAND+=("$@")
cd "$ROOT"
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${COMMAND[@]}"; echo; else exec "${COMMAND[@]}"; fi
