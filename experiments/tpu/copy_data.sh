#!/usr/bin/env bash
# Put the prepared datasets and the local checkpoints on every worker's disk.
#   LOCAL_TFDS=~/tfds LOCAL_MODELS=~/models bash experiments/tpu/copy_data.sh
# first uploads them from this machine to $BUCKET (skip by leaving them unset); then every
# worker copies $BUCKET/tfds to ~/tfds and $BUCKET/models to ~/models.
source "$(dirname "$0")/env.sh"
need_bucket
if [ -n "${LOCAL_TFDS:-}" ]; then run gcloud storage rsync -r "$LOCAL_TFDS" "$BUCKET/tfds"; fi
if [ -n "${LOCAL_MODELS:-}" ]; then run gcloud storage rsync -r "$LOCAL_MODELS" "$BUCKET/models"; fi
on_workers all "mkdir -p ~/tfds ~/models && gcloud storage rsync -r $BUCKET/tfds ~/tfds \
  && gcloud storage rsync -r $BUCKET/models ~/models"
