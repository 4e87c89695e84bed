"""Final spiral accuracy against width, amplitude A and seed (`_spiral.train_spiral`): each
(width, A) cell described over seeds (often bimodal), each A ≠ 1 compared with A = 1."""

import json
import math
import os
import pathlib
import warnings

from keras_dynloss._checks import invalid
from keras_dynloss.experiments import stats, sweep
from keras_dynloss.experiments._losses import SPIRAL, cell_label, spiral_loss

__all__ = ["run", "table", "write", "load_reference", "compare_reference", "DEFAULTS", "QUICK",
           "REFERENCE"]

GRID = ("widths", "amplitudes", "seeds")
DEFAULTS = dict(widths=(4, 8, 16, 24, 32, 48), amplitudes=(1.0, 70.0), seeds=tuple(range(10)),
                steps=70000, period=5000, dtype="float64", loss="ce", learning_rate=1.0,
                validation_seed=1)
QUICK = dict(DEFAULTS, widths=(8, 32), seeds=(0,), steps=400, period=100)
#: The reference runs shipped with the repository (relative to its root).
REFERENCE = os.path.join("results", "reference", "spiral_width_reference.json")
#: The settings of the reference runs; a comparison needs the same.
REFERENCE_SETTINGS = {k: DEFAULTS[k] for k in ("loss", "steps", "period", "learning_rate",
                                               "dtype")}
CELL = ("width", "amplitude")
METRICS = {"final_acc": "training accuracy", "val_acc": "validation accuracy"}


def _one(**job):
    from keras_dynloss.experiments._spiral import train_spiral

    res = train_spiral(**job)
    return dict(width=job["width"], amplitude=job["amplitude"], seed=job["seed"],
                final_acc=res["final_acc"], val_acc=res.get("val_acc"),
                final_loss=res["final_loss"], diverged=not math.isfinite(res["final_loss"]),
                seconds=res["seconds"])


def run(*, reference=None, out=None, resume=False, processes=None, progress=True, **options):
    """Trains every (width, A, seed) and returns the JSON-ready result.

    Args:
        reference: reference rows (`load_reference`) to compare the training accuracy with,
            if the settings are `REFERENCE_SETTINGS` (else a warning and `reference_note`).
        out, resume, processes, progress: as for `sweep.run` (`out/width-sweep.jsonl`).
        **options: over `DEFAULTS`: the grid (`widths`, `amplitudes`, `seeds`); `steps`,
            `period`, `dtype`, `learning_rate`, `loss` (`_spiral.build_runner`'s);
            `validation_seed`, of the held-out spiral (not 0, the training spiral's; None).

    Returns:
        `sweep.result`'s dict (rows `{width, amplitude, seed, final_acc, val_acc, final_loss,
        diverged, seconds, git_commit}`, A ≠ 1 tested against A = 1) and, with a reference,
        `reference_comparison` (`compare_reference`) or `reference_note`.

    Example:
        >>> result = run(widths=(8,), seeds=(0, 1), steps=400, period=100)
    """
    cfg = sweep.options(DEFAULTS, options)
    for a in cfg["amplitudes"]:  # fail before starting workers
        spiral_loss(cfg["loss"], 3, amplitude=a, period=cfg["period"])
    if cfg["validation_seed"] == 0:
        raise invalid("validation_seed", "a noise seed other than the training spiral's 0, "
                      "or None", 0)
    common = {k: v for k, v in cfg.items() if k not in GRID}
    settings = dict(common, static_after=max(cfg["steps"] - cfg["period"], 0), dataset=SPIRAL,
                    model="Dense(width)-ReLU-Dense(3)")
    jobs = [dict(common, width=int(w), amplitude=float(a), seed=int(s))
            for w in cfg["widths"] for a in cfg["amplitudes"] for s in cfg["seeds"]]
    diff = {k: cfg[k] for k, v in REFERENCE_SETTINGS.items() if cfg[k] != v}
    note = (f"the reference runs used {REFERENCE_SETTINGS}; this run differs in {diff}"
            if reference and diff else None)
    if note:
        warnings.warn(f"Not comparing with the reference: {note}.", stacklevel=2)
    runs = sweep.run(_one, jobs, name="width-sweep", settings=settings, key=(*CELL, "seed"),
                     out=out, resume=resume, processes=processes, progress=progress)
    metrics = {m: METRICS[m] for m in METRICS if cfg["validation_seed"] is not None
               or m != "val_acc"}
    result = sweep.result("width-sweep", runs, cell=CELL, metrics=metrics,
                          config=dict(settings, **{k: list(cfg[k]) for k in GRID}),
                          baseline=lambda cell: (cell[0], 1.0))
    if note:
        result.update(reference_comparison=[], reference_note=note)
    elif reference:
        result["reference_comparison"] = compare_reference(runs["rows"], reference)
    return result


def load_reference(path):
    """The reference rows `{width, amplitude, seed, final_acc}` of a file like `REFERENCE`."""
    return [dict(width=int(r["width"]), amplitude=float(r["A"]), seed=int(r["seed"]),
                 final_acc=float(r["final_acc"]))
            for r in json.loads(pathlib.Path(path).read_text())["runs"]]


def compare_reference(rows, reference):
    """`sweep.rank_tests` of the training accuracy of each (width, A) cell in both, with the
    cells described (`ours`, `ref`); `effect` is P(our run beats a reference run)."""
    ours, ref = (sweep.cells(r, CELL, "final_acc") for r in (rows, reference))
    return sweep.rank_tests([
        (dict(width=w, amplitude=a, ours=stats.describe(ours[(w, a)]).as_dict(),
              ref=stats.describe(v).as_dict()), ours[(w, a)], v)
        for (w, a), v in ref.items() if (w, a) in ours])


def table(result):
    """Markdown: the cells, the tests against A = 1, and the comparison with the reference."""
    def label(d):
        return [str(d["width"]), cell_label(result["config"]["loss"], d["amplitude"])]

    text = sweep.table(result, ["width", "objective"], label)
    diverged = [r for r in result["rows"] if r.get("diverged")]
    if diverged:
        text += (f"\n\n{len(diverged)} run(s) ended with a non-finite loss (counted with their "
                 "final accuracy): " + ", ".join(f"width {r['width']} A={r['amplitude']:g} "
                                                 f"seed {r['seed']}" for r in diverged))
    if result.get("reference_comparison"):
        lines = [[*label(c), *sweep.described(c["ours"])[1:], *sweep.described(c["ref"])[1:],
                  *sweep.tested(c)] for c in result["reference_comparison"]]
        text += ("\n\nTraining accuracy against the reference runs (two-sided Mann–Whitney U, "
                 "Holm over the cells; effect = P(our run beats a reference run)):\n\n"
                 + sweep.markdown(["width", "objective", "ours median [Q1, Q3]", "ours > 0.9",
                                   "reference median [Q1, Q3]", "reference > 0.9",
                                   *sweep.TESTS_HEADER], lines))
    return text


def write(result, out, reference=None):
    """Writes `width-sweep.json`, `.md` and `.png` (each seed a dot, the medians against width, the
    reference seeds when compared: `keras_dynloss.plot.sweep`) into `out`; returns the paths."""
    from keras_dynloss import plot

    cfg = result["config"]
    return sweep.write(result, out, "width-sweep", text=table(result), figure=lambda: plot.sweep(
        result, reference=reference if result.get("reference_comparison") else None,
        title=f"spiral, {cfg['steps']} GD steps, T={cfg['period']}, "
              f"{len(cfg['seeds'])} seeds per cell",
        series_label=lambda a: cell_label(cfg["loss"], a)))
