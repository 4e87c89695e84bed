"""Final accuracy on the spiral vs network width, A and seed, with its distribution.

Each run is :func:`~keras_dynloss.experiments._spiral.train_spiral` (full-batch
GD, η = 1, T = 5000, last period static) with one of the objectives of
:mod:`~keras_dynloss.experiments._losses`; the final accuracy is measured on the
300 training points and on a held-out spiral of the same construction with
another noise seed (``validation_seed``). Runs are independent and go to a pool
of worker processes.

Outcomes over seeds are often bimodal (most seeds stall near 0.5, a few reach
0.99), so every cell is described by n, mean ± std, median, quartiles and the
fraction of seeds above 0.9 (:func:`~keras_dynloss.experiments.stats.describe`),
and cells are compared with a two-sided Mann–Whitney U test, Holm-adjusted over
the cells compared (:mod:`~keras_dynloss.experiments.stats`).
"""

import json
import math
import os
import time
import warnings

from keras_dynloss._checks import invalid
from keras_dynloss.experiments import stats
from keras_dynloss.experiments._common import run_jobs, write_json
from keras_dynloss.experiments._losses import cell_label, spiral_loss
from keras_dynloss.experiments._provenance import provenance

__all__ = ["run", "summarize", "compare_amplitudes", "compare_reference", "load_reference",
           "attach_reference", "table", "plot", "write", "DEFAULTS", "QUICK", "REFERENCE"]

DEFAULTS = dict(widths=(4, 8, 16, 24, 32, 48), amplitudes=(1.0, 70.0), seeds=tuple(range(10)),
                steps=70000, period=5000, dtype="float64", loss="ce", validation_seed=1)
QUICK = dict(widths=(8, 32), amplitudes=(1.0, 70.0), seeds=(0,), steps=400, period=100,
             dtype="float64", loss="ce", validation_seed=1)
#: The reference runs shipped with the repository (relative to its root).
REFERENCE = os.path.join("results", "reference", "spiral_width_reference.json")
#: Settings the reference runs used; a comparison needs the same.
REFERENCE_CONFIG = dict(loss="ce", steps=70000, period=5000, learning_rate=1.0,
                        dtype="float64")
THRESHOLD = 0.9


def _one(**job):
    from keras_dynloss.experiments._spiral import train_spiral

    res = train_spiral(**job)
    return dict(loss=job["loss"], width=res["width"], amplitude=res["amplitude"],
                seed=res["seed"], final_acc=res["final_acc"], val_acc=res.get("val_acc"),
                final_loss=res["final_loss"], diverged=not math.isfinite(res["final_loss"]),
                seconds=res["seconds"])


def run(*, widths=DEFAULTS["widths"], amplitudes=DEFAULTS["amplitudes"],
        seeds=DEFAULTS["seeds"], steps=70000, period=5000, dtype="float64",
        learning_rate=1.0, loss="ce", validation_seed=1, processes=None, progress=True):
    """Trains every (width, A, seed) and returns the JSON-ready result.

    Args:
        widths, amplitudes, seeds: the grid.
        steps, period, dtype, learning_rate: as for ``train_spiral``.
        loss: ``"ce"``, ``"mse"``, ``"dmse"`` or ``"dmse-componentwise"``.
        validation_seed: noise seed of the held-out spiral (the training spiral
            has seed 0); None skips validation.
        processes: worker processes (default ``os.cpu_count()``; 1 runs inline).
        progress: progress bar on stderr.

    Returns:
        A dict with ``config`` (with the git commit), ``rows`` (``{loss, width,
        amplitude, seed, final_acc, val_acc, final_loss, diverged, seconds}``, one per
        run), ``summary`` (:func:`summarize`), ``amplitude_comparison``
        (:func:`compare_amplitudes`) and ``seconds``.
    """
    for a in amplitudes:  # fail before starting workers
        spiral_loss(loss, 3, amplitude=a, period=period)
    if validation_seed == 0:
        raise invalid("validation_seed", "a noise seed other than the training "
                            "spiral's 0, or None", validation_seed)
    jobs = [dict(width=int(w), amplitude=float(a), seed=int(s), steps=steps, period=period,
                 dtype=dtype, learning_rate=learning_rate, loss=loss,
                 validation_seed=validation_seed)
            for w in widths for a in amplitudes for s in seeds]
    config = dict(loss=loss, widths=list(widths), amplitudes=list(amplitudes),
                  seeds=list(seeds), steps=steps, period=period,
                  static_after=max(steps - period, 0), dtype=dtype,
                  learning_rate=learning_rate,
                  dataset="spiral(points_per_class=100, num_classes=3, revolutions=4, "
                          "noise=0.2, seed=0)",
                  validation=(None if validation_seed is None else
                              f"spiral(..., seed={validation_seed}): same construction, "
                              "other noise"),
                  model="Dense(width)-ReLU-Dense(3)", **provenance())
    start = time.perf_counter()
    rows = run_jobs(_one, jobs, processes=processes, progress=progress, label="width-sweep")
    rows.sort(key=lambda r: (r["width"], r["amplitude"], r["seed"]))
    return dict(experiment="width-sweep", config=config, rows=rows,
                summary=summarize(rows), amplitude_comparison=compare_amplitudes(rows),
                seconds=time.perf_counter() - start)


def _groups(rows, key):
    groups = {}
    for r in rows:
        if r.get(key) is not None:
            groups.setdefault((r["width"], float(r["amplitude"])), []).append(r[key])
    return groups


def summarize(rows):
    """Per (width, A): ``train`` and ``val`` :func:`~stats.describe` dicts (threshold 0.9)."""
    train, val = _groups(rows, "final_acc"), _groups(rows, "val_acc")
    return [dict(width=w, amplitude=a,
                 train=stats.describe(v, threshold=THRESHOLD).as_dict(),
                 val=(stats.describe(val[(w, a)], threshold=THRESHOLD).as_dict()
                      if (w, a) in val else None))
            for (w, a), v in sorted(train.items())]


def _tests(pairs):
    """Mann–Whitney U for each ``(keys, x, y)``, Holm-adjusted over the family."""
    out = [dict(keys, **stats.mann_whitney(x, y).as_dict()) for keys, x, y in pairs]
    for d, p in zip(out, stats.holm([d["pvalue"] for d in out])):
        d["pvalue_holm"] = p
        d["significant"] = p < 0.05
    return out


def compare_amplitudes(rows, baseline=1.0):
    """Each A ≠ ``baseline`` against A = ``baseline`` at the same width, per metric.

    Returns a list of ``{metric, width, amplitude, u, pvalue, method, effect
    (P(A beats the baseline)), pvalue_holm, significant}``; Holm runs over the
    cells of one metric (``"train"`` or ``"val"``).
    """
    out = []
    for metric, key in (("train", "final_acc"), ("val", "val_acc")):
        groups = _groups(rows, key)
        pairs = [(dict(metric=metric, width=w, amplitude=a), v, groups[(w, baseline)])
                 for (w, a), v in sorted(groups.items())
                 if a != baseline and (w, baseline) in groups]
        out += _tests(pairs)
    return out


def compare_reference(result, reference_rows):
    """Training accuracy per (width, A) in both: ours vs the reference's seeds.

    Returns a list of ``{width, amplitude, ours, ref (describe dicts), u, pvalue,
    method, effect (P(ours beats the reference)), pvalue_holm, significant}``.
    """
    ours, ref = _groups(result["rows"], "final_acc"), _groups(reference_rows, "final_acc")
    pairs = [(dict(width=w, amplitude=a,
                   ours=stats.describe(ours[(w, a)], threshold=THRESHOLD).as_dict(),
                   ref=stats.describe(v, threshold=THRESHOLD).as_dict()),
              ours[(w, a)], v) for (w, a), v in sorted(ref.items()) if (w, a) in ours]
    return _tests(pairs)


def reference_mismatch(config):
    """Why ``config`` cannot be compared with the reference runs (None if it can)."""
    diff = {k: config.get(k) for k, v in REFERENCE_CONFIG.items() if config.get(k) != v}
    return (f"the reference runs used {REFERENCE_CONFIG}; this run differs in {diff}"
            if diff else None)


def load_reference(path):
    """Reads the reference rows (``{"runs": [{width, A, seed, final_acc}]}``)."""
    with open(path) as f:
        data = json.load(f)
    return [dict(width=int(r["width"]), amplitude=float(r["A"]), seed=int(r["seed"]),
                 final_acc=float(r["final_acc"])) for r in data["runs"]]


def _cell(d):
    if d is None:
        return "—", "—", "—"
    std = f" ± {d['std']:.3f}" if d["std"] is not None else ""
    return (f"{d['mean']:.3f}{std}", f"{d['median']:.3f} [{d['q1']:.3f}, {d['q3']:.3f}]",
            f"{d['above']}/{d['n']}")


def table(result):
    """Markdown: the cells (train and validation), then the tests."""
    loss = result["config"].get("loss", "ce")
    lines = ["| width | objective | n | train mean ± std | train median [Q1, Q3] | train > 0.9 "
             "| val mean ± std | val median [Q1, Q3] | val > 0.9 |", "|" + "---|" * 9]
    for s in result["summary"]:
        cells = [str(s["width"]), cell_label(loss, s["amplitude"]), str(s["train"]["n"]),
                 *_cell(s["train"]), *_cell(s["val"])]
        lines.append("| " + " | ".join(cells) + " |")
    diverged = [r for r in result["rows"] if r.get("diverged")]
    if diverged:
        lines += ["", f"{len(diverged)} run(s) ended with a non-finite loss (counted with "
                  "their final accuracy): " + ", ".join(
                      f"width {r['width']} A={r['amplitude']:g} seed {r['seed']}"
                      for r in diverged)]
    cmp = result.get("amplitude_comparison") or []
    if cmp:
        lines += ["", "Dynamical vs static at the same width (two-sided Mann–Whitney U, "
                  "Holm over widths per metric; effect = P(dynamical seed beats static seed)):",
                  "", "| metric | width | objective | effect | U | p | p (Holm) | "
                  "significant at 5 % |", "|" + "---|" * 8]
        for c in cmp:
            lines.append(f"| {c['metric']} | {c['width']} | {cell_label(loss, c['amplitude'])} "
                         f"vs {cell_label(loss, 1.0)} | {c['effect']:.2f} | {c['u']:g} | "
                         f"{stats.fmt_p(c['pvalue'])} | {stats.fmt_p(c['pvalue_holm'])} | "
                         f"{'yes' if c['significant'] else 'no'} |")
    ref = result.get("reference_comparison") or []
    if ref:
        lines += ["", "Training accuracy vs the reference runs (two-sided Mann–Whitney U, "
                  "Holm over cells; effect = P(our seed beats a reference seed)):", "",
                  "| width | objective | ours median [Q1, Q3] | ours > 0.9 | reference median "
                  "[Q1, Q3] | reference > 0.9 | effect | p | p (Holm) | differ at 5 % |",
                  "|" + "---|" * 10]
        for c in ref:
            o, r = _cell(c["ours"]), _cell(c["ref"])
            lines.append(f"| {c['width']} | {cell_label('ce', c['amplitude'])} | {o[1]} | "
                         f"{o[2]} | {r[1]} | {r[2]} | {c['effect']:.2f} | "
                         f"{stats.fmt_p(c['pvalue'])} | {stats.fmt_p(c['pvalue_holm'])} | "
                         f"{'yes' if c['significant'] else 'no'} |")
    return "\n".join(lines)


def plot(result, path, reference=None):
    """Every seed as a dot, medians as lines, vs width; train (and validation) panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cfg = result["rows"], result["config"]
    loss = cfg.get("loss", "ce")
    has_val = any(r.get("val_acc") is not None for r in rows)
    panels = [("final_acc", "final training accuracy")]
    if has_val:
        panels.append(("val_acc", "validation accuracy (held-out spiral)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    amps = sorted({float(r["amplitude"]) for r in rows})
    widths = sorted({r["width"] for r in rows})
    pos = {w: i for i, w in enumerate(widths)}
    series = [("ours", rows, amps)]
    if reference:
        series.append(("reference", reference, amps))
    n_series = len(amps) * len(series)
    rng = np.random.default_rng(0)
    for ax, (key, ylabel) in zip(axes[0], panels):
        k = 0
        for name, rr, aa in series:
            if key != "final_acc" and name == "reference":
                continue
            for i, a in enumerate(aa):
                groups = _groups([r for r in rr if float(r["amplitude"]) == a], key)
                if not groups:
                    continue
                off = (k - (n_series - 1) / 2) * 0.8 / max(n_series, 1)
                k += 1
                ws = sorted(w for w, _ in groups if w in pos)
                label = cell_label(loss if name == "ours" else "ce", a)
                for w in ws:
                    v = np.asarray(groups[(w, a)])
                    jitter = rng.uniform(-0.04, 0.04, v.size)
                    ax.scatter(pos[w] + off + jitter, v, s=12, color=f"C{i}",
                               marker="o" if name == "ours" else "x",
                               alpha=0.6 if name == "ours" else 0.8, lw=0.8)
                ax.plot([pos[w] + off for w in ws], [np.median(groups[(w, a)]) for w in ws],
                        color=f"C{i}", ls="-" if name == "ours" else "none",
                        marker="_", ms=14 if name == "ours" else 22, mew=2,
                        label=(f"{label} (median)" if name == "ours"
                               else f"reference {label} (x: seeds, bar: median)"))
        ax.set_xticks(range(len(widths)), [str(w) for w in widths])
        ax.set_xlabel("hidden width")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.axhline(THRESHOLD, color="0.6", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    n = len(cfg["seeds"])
    fig.suptitle(f"spiral, {cfg['steps']} GD steps, T={cfg['period']}, {n} seeds per cell "
                 f"(dots: seeds, lines: medians)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def attach_reference(result, reference):
    """``result`` with ``reference_comparison`` (or, for other settings, a ``reference_note``).

    Args:
        result: :func:`run`'s result.
        reference: reference rows (:func:`load_reference`) or None.
    """
    if not reference:
        return result
    why = reference_mismatch(result["config"])
    if why:
        warnings.warn(f"Not comparing with the reference: {why}.", stacklevel=2)
        return dict(result, reference_comparison=[], reference_note=why)
    return dict(result, reference_comparison=compare_reference(result, reference))


def write(result, out_dir, reference=None):
    """Writes ``width-sweep.json`` / ``.md`` / ``.png`` (reference seeds drawn when compared)."""
    jpath = write_json(result, out_dir, "width-sweep")
    with open(os.path.join(out_dir, "width-sweep.md"), "w") as f:
        f.write(table(result) + "\n")
    shown = reference if result.get("reference_comparison") else None
    ppath = plot(result, os.path.join(out_dir, "width-sweep.png"), shown)
    return jpath, ppath
