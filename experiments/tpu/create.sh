#!/usr/bin/env bash
# Create the TPU VM or pod slice. SPOT=1 asks for Spot capacity through a queued resource
# (the documented way: a Spot TPU that is preempted cannot be restarted, only deleted and
# created again; resume.sh does that and relaunches) and waits until it is ACTIVE.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
if [ "$SPOT" = 1 ]; then
  run gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" --node-id="$TPU_NAME" \
    --zone="$ZONE" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" --spot
  describe=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" --zone="$ZONE"
            --format='value(state.state)')
  if [ "${DRY_RUN:-0}" = 1 ]; then run "${describe[@]}"; exit 0; fi
  while true; do
    state=$("${describe[@]}")
    case "$state" in
      ACTIVE) echo "queued resource $QUEUED_RESOURCE: ACTIVE ($TPU_NAME is up)"; break ;;
      FAILED | SUSPENDED | SUSPENDING)
        die "queued resource $QUEUED_RESOURCE: $state (bash experiments/tpu/delete.sh, then try again or another zone)" ;;
      *) echo "queued resource $QUEUED_RESOURCE: $state; checking again in 60 s" ;;
    esac
    sleep 60
  done
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi
