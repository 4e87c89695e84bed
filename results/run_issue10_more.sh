#!/usr/bin/env bash
# Optional follow-up of run_issue10.sh: both DMSE readings with 10 seeds per cell
# (seeds 0-4 rerun and must reproduce the 5-seed tables exactly).
set -u
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%FT%TZ) $(git rev-parse --short HEAD)] $*"; }
step() {
  local name=$1; shift
  log "start $name: python -m keras_dynloss $*"
  /usr/bin/time -v python -m keras_dynloss "$@" > "results/logs/$name.log" 2>&1
  log "end $name (exit $?)"
}
for loss in dmse dmse-componentwise; do
  step "width-sweep-$loss-10seeds" width-sweep --out "results/width-sweep-$loss-10seeds" \
      --loss "$loss" --processes 2 --seeds 0-9 --widths 4,8,16,24,32,48 --amplitudes 1,70
done
log done
