#!/usr/bin/env bash
# Follow a table's log on worker 0 (WORKER=N for another); Ctrl-C stops following, not the run.
# shellcheck source-path=SCRIPTDIR source=env.sh
source "$(dirname "$0")/env.sh"
TABLE=${1:?usage: logs.sh TABLE}
on_workers "${WORKER:-0}" "tail -n 40 -f ~/gj_$TABLE.log"
