#!/usr/bin/env bash
# Install the project on every worker: this checkout (git HEAD) replaces ~/gumbel-jax there
# (runs live elsewhere: ~/gj_runs or the bucket), and ~/gumbel-jax/.venv is built by uv with
# a uv-managed CPython $PYTHON_VERSION (the runtime images, Ubuntu 22.04, ship Python 3.10;
# jax >= 0.10.2 needs >= 3.11) holding requirements.txt, jax[tpu] (JAX with libtpu) and
# gcsfs (gs:// run folders: etils.epath reads and writes them through it).
# Then every worker checks that JAX sees the slice's TPU chips; on a pod slice the check
# first joins all hosts with jax.distributed.initialize(), as the runs do.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
if [ "${DRY_RUN:-0}" = 1 ]; then
  ARCHIVE=${TMPDIR:-/tmp}/gumbel-jax.XXXXXX/gumbel-jax.tar.gz
else
  ARCHIVE_DIR=$(mktemp -d)
  trap 'rm -rf "$ARCHIVE_DIR"' EXIT
  ARCHIVE=$ARCHIVE_DIR/gumbel-jax.tar.gz
fi
run git -C "$ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$ARCHIVE" HEAD
run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":~/ --zone="$ZONE" --worker=all
INSTALL="set -e; export PATH=\$HOME/.local/bin:\$HOME/.cargo/bin:\$PATH; \
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; \
rm -rf ~/$REMOTE_DIR && tar xzf ~/gumbel-jax.tar.gz -C ~ && cd ~/$REMOTE_DIR; \
uv venv --python $PYTHON_VERSION .venv; \
uv pip install --python .venv/bin/python -r requirements.txt \"jax[tpu]\" gcsfs"
on_workers all "$INSTALL"
# After every worker has installed: on a pod slice jax.distributed.initialize() waits for
# all hosts, and jax.device_count() before it would count only this host's chips.
INIT=""
if [ "$MULTIHOST" = 1 ]; then INIT="jax.distributed.initialize(); "; fi
CHECK="import sys, jax; assert sys.version_info >= (3, 11), sys.version; ${INIT}\
print('process', jax.process_index(), 'of', jax.process_count(), ':', jax.local_device_count(), \
'local and', jax.device_count(), 'global', jax.devices()[0].platform, 'devices'); \
assert jax.devices()[0].platform == 'tpu', 'JAX does not see the TPU (is jax[tpu] installed?)'; \
assert jax.device_count() == $DEVICES, 'expected $DEVICES TPU devices on $ACCELERATOR'"
on_workers all "cd ~/$REMOTE_DIR && .venv/bin/python -c \"$CHECK\""
