#!/usr/bin/env bash
# Put the prepared datasets and the local checkpoints on every worker's disk.
#   LOCAL_TFDS=~/tfds LOCAL_MODELS=~/models bash experiments/tpu/copy_data.sh
# first uploads them from this machine to $BUCKET/tfds and $BUCKET/models (skip either by
# leaving it unset); then every worker copies $BUCKET/tfds to ~/tfds and $BUCKET/models to
# ~/models. A folder missing from the bucket is skipped with a note (the configs that need
# it then fail, naming it), not an error.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
need_bucket
if [ -n "${LOCAL_TFDS:-}" ]; then run gcloud storage rsync -r "$LOCAL_TFDS" "$BUCKET/tfds"; fi
if [ -n "${LOCAL_MODELS:-}" ]; then run gcloud storage rsync -r "$LOCAL_MODELS" "$BUCKET/models"; fi
PULL="set -e; for d in tfds models; do mkdir -p ~/\$d; \
if gcloud storage ls $BUCKET/\$d/ >/dev/null 2>&1; then gcloud storage rsync -r $BUCKET/\$d ~/\$d; \
else echo \"$BUCKET/\$d: not in the bucket, skipped\"; fi; done"
on_workers all "$PULL"
