#!/usr/bin/env bash
# Delete the TPU VM (the bucket and its results stay).
source "$(dirname "$0")/env.sh"
run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
