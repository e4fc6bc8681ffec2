#!/usr/bin/env bash
# Delete the TPU VM (with SPOT=1: its queued resource, and the VM with it). The bucket, and
# with it the runs of a pod slice or Spot VM, stays.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
if [ "$SPOT" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" --zone="$ZONE" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
fi
