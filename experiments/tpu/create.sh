#!/usr/bin/env bash
# Create the TPU VM or pod slice. SPOT=1 asks for a Spot VM (cheaper; can be preempted:
# reproduce resumes where it stopped when launched again).
source "$(dirname "$0")/env.sh"
run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
