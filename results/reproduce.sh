#!/usr/bin/env bash
# Regenerates the published results in results/ (results runs, not tests): the width sweep
# with the reference comparison, the two dynamical-MSE sweeps, and the two Fashion-MNIST grids
# (docs/paper.md says what each shows). Each command writes DIR/<command>.json (with what
# produced it), .md, .png and the runs as they finish (.jsonl); its output goes to
# results/logs/<name>.log. The overparam grids pass --resume: runs already in DIR are kept.
# Needs Debian's dataset-fashion-mnist (the grids use --data offline) and
# pip install -e ".[plot,datasets,stats]".
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
