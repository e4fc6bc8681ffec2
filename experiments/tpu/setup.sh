#!/usr/bin/env bash
# Install the project on every worker: this checkout (git HEAD) is copied over, a .venv is
# made with the project's requirements and JAX for TPU. On a pod slice, $BUCKET/runs is
# mounted at $WORKDIR (gcsfuse) so that every host sees the same checkpoints.
source "$(dirname "$0")/env.sh"
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
ARCHIVE=$(mktemp -d)/gumbel-jax.tar.gz
run git -C "$ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$ARCHIVE" HEAD
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":~/ --zone="$ZONE" --worker=all
INSTALL="rm -rf $REMOTE_DIR && tar xzf gumbel-jax.tar.gz && cd $REMOTE_DIR \
  && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip \
  && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' \
  && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
on_workers all "$INSTALL"
if [ "$MULTIHOST" = 1 ]; then
  need_bucket
  MOUNT="set -e; if ! command -v gcsfuse >/dev/null; then \
    echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list; \
    curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi; \
    sudo mkdir -p $WORKDIR && sudo chown \$USER $WORKDIR; \
    mountpoint -q $WORKDIR || gcsfuse --implicit-dirs --only-dir runs ${BUCKET#gs://} $WORKDIR"
  on_workers all "$MOUNT"
fi
