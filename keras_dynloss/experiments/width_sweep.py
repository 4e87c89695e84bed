"""Final training accuracy on the spiral vs network width, A and seed.

Each run is :func:`~keras_dynloss.experiments._spiral.train_spiral` (full-batch
GD, η = 1, T = 5000, last period static). Runs are independent and go to a pool
of worker processes.
"""

import json
import os
import time

import numpy as np

from keras_dynloss.experiments._common import write_json, run_jobs

__all__ = ["run", "summarize", "table", "plot", "compare_reference", "DEFAULTS", "QUICK"]

DEFAULTS = dict(widths=(4, 8, 16, 24, 32, 48), amplitudes=(1.0, 70.0), seeds=(0, 1, 2),
                steps=70000, period=5000, dtype="float64")
QUICK = dict(widths=(8, 32), amplitudes=(1.0, 70.0), seeds=(0,), steps=400, period=100,
             dtype="float64")


def _one(**job):
    from keras_dynloss.experiments._spiral import train_spiral

    res = train_spiral(**job)
    return dict(width=res["width"], amplitude=res["amplitude"], seed=res["seed"],
                final_acc=res["final_acc"], final_loss=res["final_loss"],
                seconds=res["seconds"])


def run(*, widths=DEFAULTS["widths"], amplitudes=DEFAULTS["amplitudes"],
        seeds=DEFAULTS["seeds"], steps=70000, period=5000, dtype="float64",
        learning_rate=1.0, processes=None, progress=True):
    """Trains every (width, A, seed) and returns the JSON-ready result.

    Args:
        widths, amplitudes, seeds: the grid.
        steps, period, dtype, learning_rate: as for ``train_spiral``.
        processes: worker processes (default ``os.cpu_count()``; 1 runs inline).
        progress: progress bar on stderr.

    Returns:
        A dict with ``config``, ``rows`` (``{width, amplitude, seed, final_acc,
        final_loss, seconds}``, one per run), ``summary`` (mean ± std per
        (width, A)) and ``seconds``.
    """
    jobs = [dict(width=int(w), amplitude=float(a), seed=int(s), steps=steps, period=period,
                 dtype=dtype, learning_rate=learning_rate)
            for w in widths for a in amplitudes for s in seeds]
    start = time.perf_counter()
    rows = run_jobs(_one, jobs, processes=processes, progress=progress,
                    label="width-sweep")
    rows.sort(key=lambda r: (r["width"], r["amplitude"], r["seed"]))
    return dict(
        experiment="width-sweep",
        config=dict(widths=list(widths), amplitudes=list(amplitudes), seeds=list(seeds),
                    steps=steps, period=period, static_after=max(steps - period, 0),
                    dtype=dtype, learning_rate=learning_rate,
                    dataset="spiral(points_per_class=100, num_classes=3, revolutions=4, "
                            "noise=0.2, seed=0)", model="Dense(width)-ReLU-Dense(3)"),
        rows=rows,
        summary=summarize(rows),
        seconds=time.perf_counter() - start,
    )


def summarize(rows):
    """Mean and std (ddof=0) of ``final_acc`` per (width, amplitude)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["width"], r["amplitude"]), []).append(r["final_acc"])
    return [dict(width=w, amplitude=a, n=len(v), mean=float(np.mean(v)), std=float(np.std(v)))
            for (w, a), v in sorted(groups.items())]


def table(result, reference=None):
    """A markdown table: one row per width, one column per amplitude (mean ± std)."""
    summary = result["summary"]
    amps = sorted({s["amplitude"] for s in summary})
    widths = sorted({s["width"] for s in summary})
    by = {(s["width"], s["amplitude"]): s for s in summary}
    ref = {}
    if reference:
        for s in summarize(reference):
            ref[(s["width"], s["amplitude"])] = s
    head = ["width"] + [("CE (A=1)" if a == 1 else f"A={a:g}") for a in amps]
    if ref:
        head += [("ref CE" if a == 1 else f"ref A={a:g}") for a in amps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in widths:
        cells = [str(w)]
        for a in amps:
            s = by.get((w, a))
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})" if s else "")
        if ref:
            for a in amps:
                s = ref.get((w, float(a)))
                cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_reference(result, reference_rows):
    """Per (width, A) in both: ours vs the reference, and |Δmean| / pooled std error."""
    ours = {(s["width"], s["amplitude"]): s for s in result["summary"]}
    out = []
    for s in summarize(reference_rows):
        key = (s["width"], float(s["amplitude"]))
        if key not in ours:
            continue
        o = ours[key]
        se = np.sqrt(o["std"] ** 2 / max(o["n"], 1) + s["std"] ** 2 / max(s["n"], 1))
        out.append(dict(width=key[0], amplitude=key[1], ours_mean=o["mean"], ours_std=o["std"],
                        ref_mean=s["mean"], ref_std=s["std"],
                        diff=o["mean"] - s["mean"],
                        z=float((o["mean"] - s["mean"]) / se) if se > 0 else None))
    return out


def load_reference(path):
    """Reads the authors' rows (``{"runs": [{width, A, seed, final_acc}]}``)."""
    with open(path) as f:
        data = json.load(f)
    return [dict(width=int(r["width"]), amplitude=float(r["A"]), seed=int(r["seed"]),
                 final_acc=float(r["final_acc"])) for r in data["runs"]]


def plot(result, path, reference=None):
    """Final training accuracy (mean ± std over seeds) vs width, one line per A."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    summary = result["summary"]
    for i, a in enumerate(sorted({s["amplitude"] for s in summary})):
        ss = [s for s in summary if s["amplitude"] == a]
        label = "cross-entropy (A=1)" if a == 1 else f"dynamical loss A={a:g}"
        ax.errorbar([s["width"] for s in ss], [s["mean"] for s in ss],
                    yerr=[s["std"] for s in ss], marker="o", capsize=3, color=f"C{i}",
                    label=label)
        if reference:
            rr = [s for s in summarize(reference) if s["amplitude"] == a]
            if rr:
                ax.errorbar([s["width"] for s in rr], [s["mean"] for s in rr],
                            yerr=[s["std"] for s in rr], marker="x", ls="none", capsize=3,
                            color=f"C{i}", alpha=0.6, label=f"authors' JAX, {label}")
    cfg = result["config"]
    ax.set_xlabel("hidden width")
    ax.set_ylabel("final training accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"spiral, {cfg['steps']} GD steps, T={cfg['period']}, "
                 f"{len(cfg['seeds'])} seeds", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(result, out_dir, reference=None):
    """Writes ``width-sweep.json`` / ``width-sweep.png`` / ``width-sweep.md``."""
    if reference:
        result = dict(result, reference_comparison=compare_reference(result, reference))
    jpath = write_json(result, out_dir, "width-sweep")
    with open(os.path.join(out_dir, "width-sweep.md"), "w") as f:
        f.write(table(result, reference) + "\n")
    ppath = plot(result, os.path.join(out_dir, "width-sweep.png"), reference)
    return jpath, ppath
