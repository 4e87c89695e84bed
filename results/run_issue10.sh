#!/usr/bin/env bash
# Regenerates the published results of issue 10 (results runs, not tests):
# about 2 h on 2 CPU cores shared with other work. Each command writes
# DIR/<command>.json (with the git commit it ran at), .md and .png; logs in results/logs/.
set -u
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
log() { echo "[$(date -u +%FT%TZ) $(git rev-parse --short HEAD)] $*"; }
step() {  # step NAME ARGS...: one CLI run, its output in results/logs/NAME.log
  local name=$1; shift
  log "start $name: python -m keras_dynloss $*"
  /usr/bin/time -v python -m keras_dynloss "$@" > "results/logs/$name.log" 2>&1
  log "end $name (exit $?)"
}
# (i) cross-entropy vs A = 70, 10 seeds per cell, beside the shipped reference runs
step width-sweep width-sweep --out results --processes 2 --seeds 0-9 \
    --widths 4,8,16,24,32,48 --amplitudes 1,70 \
    --reference results/reference/spiral_width_reference.json
# (ii) the follow-up's losses (A = 1 of both DMSE readings is the same plain MSE)
step width-sweep-dmse width-sweep --out results/width-sweep-dmse --loss dmse \
    --processes 2 --seeds 0-4 --widths 4,8,16,24,32,48 --amplitudes 1,70
step width-sweep-dmse-componentwise width-sweep --out results/width-sweep-dmse-componentwise \
    --loss dmse-componentwise --processes 2 --seeds 0-4 --widths 4,8,16,24,32,48 --amplitudes 1,70
# (iii) Myrtle CNN on 1000 offline Fashion-MNIST images, A x period, 4 seeds
step overparam-myrtle overparam --out results/overparam-myrtle --model myrtle --data offline \
    --processes 2
# (iv) the MLP grid again with the new statistics
step overparam-mlp overparam --out results --model mlp --data offline --processes 2
log done
