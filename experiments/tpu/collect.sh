#!/usr/bin/env bash
# Build the tables on worker 0 and copy tables.md / tables.csv to ./tpu_results/ here.
# Runs in the bucket (pod slices, Spot VMs): their results (not checkpoints) are first
# copied to worker 0's ~/gj_collect, as make_tables reads a local folder. Runs on one
# host's disk: they are also copied to $BUCKET/runs when BUCKET is set.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
check_workdir
MAKE_TABLES="cd ~/$REMOTE_DIR && .venv/bin/python -m experiments.make_tables"
case "$WORKDIR" in
  gs://*)
    SKIP='(^|.*/)(checkpoints|best|tensorboard)/.*|.*_predictions\.jsonl$'
    on_workers 0 "set -e; rm -rf ~/gj_collect && mkdir -p ~/gj_collect \
&& gcloud storage rsync -r -x '$SKIP' $WORKDIR ~/gj_collect && $MAKE_TABLES --workdir ~/gj_collect"
    REMOTE_TABLES=gj_collect ;;
  *)
    on_workers 0 "$MAKE_TABLES --workdir $WORKDIR"
    if [ -n "$BUCKET" ]; then on_workers 0 "gcloud storage rsync -r $WORKDIR $BUCKET/runs"; fi
    REMOTE_TABLES=${WORKDIR#\~/} ;;  # scp reads paths without a leading / from the home
esac
run mkdir -p tpu_results
for file in tables.md tables.csv; do
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:$REMOTE_TABLES/$file" tpu_results/ \
    --zone="$ZONE" --worker=0
done
