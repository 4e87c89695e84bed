#!/usr/bin/env bash
# Regenerates the published results of issue 10 (results runs, not tests). On 2 CPU cores
# shared with other work: width sweep 6 min (27 min before the full-batch loop became one
# XLA computation), each DMSE sweep about 7 min, CNN grid about 50 min, MLP grid 4 min.
# Each command writes DIR/<command>.json (with the git commit it ran at), .md and .png;
# logs go to results/logs/. The published files were made by these commands in three
# sessions (logs: run_issue10*.log; the width sweep was rerun at the final code, the first
# run is kept in results/width-sweep-892771c); the
# overparam grids first ran with 4 (CNN) and 3 (MLP) seeds and were extended to 6 with
# --resume, which keeps the earlier runs.
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
# (ii) the follow-up's losses, both DMSE readings (A = 1 of both is the same plain MSE)
for loss in dmse dmse-componentwise; do
  step "width-sweep-$loss-10seeds" width-sweep --out "results/width-sweep-$loss-10seeds" \
      --loss "$loss" --processes 2 --seeds 0-9 --widths 4,8,16,24,32,48 --amplitudes 1,70
done
# (iii) Myrtle CNN on 1000 offline Fashion-MNIST images, A x period, 6 seeds
step overparam-myrtle overparam --out results/overparam-myrtle --model myrtle --data offline \
    --processes 2 --seeds 0-5 --resume
# (iv) the MLP grid on 2000 images, 6 seeds
step overparam-mlp overparam --out results --model mlp --data offline --processes 2 \
    --seeds 0-5 --resume
log done
