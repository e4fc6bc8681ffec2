#!/usr/bin/env bash
# Bring a preempted Spot TPU back and continue a table: a Spot TPU cannot be restarted, so
# this deletes it (its queued resource), creates it again (waiting for capacity), installs
# the project, copies the data and launches the table again; reproduce then skips the
# finished cells and resumes the others from their last checkpoint in the bucket.
#   SPOT=1 BUCKET=gs://my-bucket bash experiments/tpu/resume.sh hotpotqa [reproduce arguments]
# Needs the run folder in the bucket (the default with SPOT=1 or on a pod slice).
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
HERE=$(dirname "$0")
: "${1:?usage: resume.sh TABLE [reproduce arguments]}"
check_workdir
case "$WORKDIR" in
  gs://*) ;;
  *) die "WORKDIR=$WORKDIR: resume.sh recreates the VM, whose disk goes with it; set SPOT=1 and BUCKET (runs in \$BUCKET/runs) or WORKDIR=gs://..." ;;
esac
# The launch's own checks (table, batch over the mesh) before anything is deleted.
DRY_RUN=1 bash "$HERE/launch.sh" "$@" > /dev/null
bash "$HERE/delete.sh" || echo "(nothing to delete)"
bash "$HERE/create.sh"
bash "$HERE/setup.sh"
LOCAL_TFDS="" LOCAL_MODELS="" bash "$HERE/copy_data.sh"
bash "$HERE/launch.sh" "$@"
