#!/usr/bin/env bash
# What the TPU scripts will do with the current settings (nothing is run): the slice's
# hosts and chips, runtime, zone, run folder, and whether each table's global batch splits
# over the mesh. One key=value per line.
#   ACCELERATOR=v5litepod-16 BUCKET=gs://my-bucket bash experiments/tpu/info.sh
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
echo "accelerator=$ACCELERATOR"
echo "generation=$GENERATION"
echo "chips=$CHIPS"
echo "hosts=$HOSTS"
echo "chips_per_host=$CHIPS_PER_HOST"
echo "devices=$DEVICES"
if [ "$MULTIHOST" = 1 ]; then echo "pod=yes"; else echo "pod=no"; fi
echo "runtime=$RUNTIME"
echo "zone=$ZONE"
if [ "$SPOT" = 1 ]; then echo "capacity=spot (queued resource $QUEUED_RESOURCE)"; else echo "capacity=on-demand"; fi
echo "bucket=$BUCKET"
echo "workdir=$WORKDIR"
echo "mesh=$MESH"
echo "python=$PYTHON_VERSION"
SHARDS=$(mesh_batch_shards "$MESH") || die "mesh $MESH does not fit the $DEVICES devices of $ACCELERATOR"
for table in $ALL_TABLES; do
  fit=ok
  for batch in $(table_batch "$table"); do
    if [ $((batch % SHARDS)) != 0 ]; then fit="does not split over $SHARDS shards"; fi
  done
  batches=$(table_batch "$table")
  echo "batch_$table=${batches// /,} ($fit)"
done
