#!/usr/bin/env bash
# Launch a table (or "all") on every worker, in the background; extra arguments go to
# experiments.reproduce (--cell ..., --seeds 1, --set key=value, --mesh D,F,T).
#   bash experiments/tpu/launch.sh hotpotqa
# Every worker runs the same command. On a pod slice they form one JAX program
# (--distributed: the TPU runtime tells jax.distributed where the coordinator is) writing
# one run folder in the bucket ($BUCKET/runs, gs:// paths through orbax). Launching again
# resumes: finished cells are skipped, interrupted ones continue from their checkpoint.
# A table whose global batch does not split over the mesh's batch shards is refused before
# anything starts, with the two ways out (MESH=-1,1,T or --set data.batch_size=N).
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
TABLE=${1:?usage: launch.sh TABLE [reproduce arguments]}
shift
case "$TABLE" in *[!A-Za-z0-9_]*) die "TABLE=$TABLE: expected a table name or all" ;; esac
check_workdir
mesh=$MESH batch=""
previous=""
for arg in "$@"; do
  case "$previous" in
    --mesh) mesh=$arg ;;
    --set) case "$arg" in data.batch_size=*) batch=${arg#data.batch_size=} ;; esac ;;
  esac
  case "$arg" in
    --mesh=*) mesh=${arg#--mesh=} ;;
    --set=data.batch_size=*) batch=${arg#--set=data.batch_size=} ;;
  esac
  previous=$arg
done
case "$batch" in '' | [1-9] | [1-9][0-9] | [1-9][0-9][0-9] | [1-9][0-9][0-9][0-9]) ;;
  *) die "data.batch_size=$batch: expected a positive integer" ;;
esac
check_batches "$TABLE" "$mesh" "$batch"
DIST=""
if [ "$MULTIHOST" = 1 ]; then DIST=" --distributed"; fi
ARGS=""
for arg in "$@"; do ARGS+=" $(shell_word "$arg")"; done
MKDIR=""
case "$WORKDIR" in gs://*) ;; *) MKDIR="mkdir -p $WORKDIR && " ;; esac
COMMAND="${MKDIR}cd ~/$REMOTE_DIR && nohup .venv/bin/python -m experiments.reproduce \
--table $TABLE --data_dir ~/tfds --models_dir ~/models --workdir $WORKDIR --seeds $SEEDS \
--mesh $MESH$DIST$ARGS > ~/gj_$TABLE.log 2>&1 < /dev/null &"
on_workers all "$COMMAND"
echo "launched; follow with: bash experiments/tpu/logs.sh $TABLE"
