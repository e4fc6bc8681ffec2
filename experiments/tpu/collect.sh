#!/usr/bin/env bash
# Build the tables on worker 0, copy the runs to $BUCKET/runs (a pod slice writes there
# already) and tables.md / tables.csv to ./tpu_results/ here.
source "$(dirname "$0")/env.sh"
on_workers 0 "cd $REMOTE_DIR && .venv/bin/python -m experiments.make_tables --workdir $WORKDIR"
if [ "$MULTIHOST" = 0 ] && [ -n "$BUCKET" ]; then
  on_workers 0 "cd $REMOTE_DIR && gcloud storage rsync -r $WORKDIR $BUCKET/runs"
fi
run mkdir -p tpu_results
for file in tables.md tables.csv; do
  remote="$WORKDIR/$file"
  case "$remote" in /*) ;; *) remote="$REMOTE_DIR/$remote" ;; esac
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:$remote" tpu_results/ --zone="$ZONE" --worker=0
done
