#!/usr/bin/env bash
# Launch a table (or "all") on every worker, in the background; extra arguments go to
# experiments.reproduce (--cell ..., --seeds 1, --set key=value).
#   bash experiments/tpu/launch.sh hotpotqa
# Every worker runs the same command; on a pod slice they form one JAX program
# (--distributed: the TPU runtime tells jax.distributed where the coordinator is).
source "$(dirname "$0")/env.sh"
TABLE=${1:?usage: launch.sh TABLE [reproduce arguments]}
shift
DIST=""
if [ "$MULTIHOST" = 1 ]; then DIST="--distributed"; fi
ARGS=""
if [ $# -gt 0 ]; then ARGS=$(printf '%q ' "$@"); fi
COMMAND="cd $REMOTE_DIR && nohup .venv/bin/python -m experiments.reproduce --table $TABLE \
  --data_dir ~/tfds --models_dir ~/models --workdir $WORKDIR --seeds ${SEEDS:-3} \
  --mesh -1,1,1 $DIST $ARGS > ~/gj_$TABLE.log 2>&1 < /dev/null &"
on_workers all "$COMMAND"
echo "launched; follow with: bash experiments/tpu/logs.sh $TABLE"
