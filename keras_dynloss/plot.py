"""Matplotlib figures of Γ(t), a `History`, a probe and a sweep (`pip install
"keras_dynloss[plot]"`): each returns a `Figure` outside pyplot (`fig.savefig("gamma.png")`).

Example:
    >>> fig = kd.plot.gamma(kd.ClassWeightSchedule(3, amplitude=70, period=100), 300)
"""

import numpy as np

from keras_dynloss._checks import invalid

__all__ = ["gamma", "history", "probe", "sweep"]


def _figure(rows, cols=1, *, width=7.0, height=2.4, layout="constrained"):
    """A Figure and its `(rows, cols)` array of axes (shared x within a column)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('keras_dynloss.plot needs matplotlib: pip install '
                          '"keras_dynloss[plot]" (or pip install matplotlib).') from err
    fig = Figure(figsize=(width * cols, height * rows), layout=layout)
    return fig, fig.subplots(rows, cols, sharex="col", squeeze=False)


def gamma(schedule, steps, *, weights=None, ax=None, max_points=20000):
    """Γ_i(t) of a schedule or a dynamical loss, one line per class.

    Args:
        schedule: a `ClassWeightSchedule` or a dynamical loss; None with `weights`.
        steps: a count `n` (steps 0 to n - 1), a `(start, stop)` pair, or an array of steps.
        weights: Γ at `steps`, shape (len(steps), C), instead of a schedule.
        ax: matplotlib axes to draw into (default: a new figure).
        max_points: the most steps evaluated, evenly spread (a short period may alias).
    """
    if isinstance(steps, (int, np.integer)) or (isinstance(steps, tuple) and len(steps) == 2):
        steps = np.arange(*np.atleast_1d(steps))
    steps = np.asarray(steps, dtype=np.int64).reshape(-1)
    if steps.size > max_points:
        steps = steps[np.linspace(0, steps.size - 1, max_points).astype(np.int64)]
    if weights is None:
        if not hasattr(schedule, "weights_at"):
            raise invalid("schedule", "a ClassWeightSchedule or a dynamical loss", schedule)
        weights = schedule.weights_at(steps)
    weights = np.asarray(weights).reshape(len(steps), -1)
    if ax is None:
        ax = _figure(1)[1][0, 0]
    for i in range(weights.shape[1]):
        ax.plot(steps, weights[:, i], lw=1, label=f"Γ_{i}")
    ax.set_ylabel("Γ_i(t)")
    ax.set_xlabel("step t")
    ax.legend(loc="upper right", fontsize=7, ncol=max(1, weights.shape[1] // 5))
    return ax.figure


def history(history, *, ce="ce"):
    """Losses, Γ statistics and the emphasised class of a training run, per epoch.

    Panels, where the logs have them: `loss` and `ce` (and `val_` versions), `gamma_<i>_max`
    (solid) and `_mean` (dashed), and `emphasized_class` (`DynamicalLossScheduler`'s keys).

    Args:
        history: a `keras.callbacks.History` (what `fit` returns) or its `.history` dict.
        ce: the name of the plain cross-entropy metric.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise invalid("history", "a keras.callbacks.History or its `history` dict", history)
    losses = [k for k in ("loss", "val_loss", ce, f"val_{ce}") if logs.get(k)]
    classes = sorted(int(k.split("_")[1]) for k in logs
                     if k.startswith("gamma_") and k.endswith("_max"))
    panels = [p for p, present in (("loss", losses), ("gamma", classes),
                                   ("emphasized", logs.get("emphasized_class"))) if present]
    if not panels:
        raise invalid("history", f"logs with 'loss', {ce!r}, 'gamma_<i>_max' or "
                      "'emphasized_class'", sorted(logs))
    fig, axes = _figure(len(panels))
    epochs = lambda values: np.arange(1, len(values) + 1)  # noqa: E731
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "loss":
            for key in losses:
                ax.plot(epochs(logs[key]), logs[key], marker=".", label=key)
            ax.set_ylabel("loss")
            ax.set_yscale("log" if all(v > 0 for k in losses for v in logs[k]) else "linear")
        elif panel == "gamma":
            for i in classes:
                for stat, style in (("max", "-"), ("mean", "--")):
                    values = logs.get(f"gamma_{i}_{stat}")
                    if values:
                        ax.plot(epochs(values), values, style, color=f"C{i % 10}",
                                label=f"Γ_{i} {stat}")
            ax.set_ylabel("Γ_i over the epoch")
        else:
            values = logs["emphasized_class"]
            ax.step(epochs(values), values, where="mid", marker=".")
            ax.set_ylabel("emphasised class")
            ax.yaxis.get_major_locator().set_params(integer=True)
        if panel != "emphasized":
            ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    return fig


def probe(history, *, learning_rate=None, axes=None, step_range=None):
    """A curvature probe's λ_max against the training step.

    Args:
        history: a `CurvatureProbe` / `InStepProbe` or its `history` dict (`step`, `*_max_eig`).
        learning_rate: η: draws the gradient-descent stability line 2/η beside the Hessian's.
        axes: one matplotlib axes per panel present (default: a new figure).
        step_range: `(start, stop)`: show only those steps.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or "step" not in logs:
        raise invalid("history", "a probe or its `history` dict with a 'step' key", history)
    keys = [k for k in ("hessian_max_eig", "ntk_max_eig") if k in logs]
    if axes is None:
        axes = _figure(max(1, len(keys)))[1][:, 0]
    step = np.asarray(logs["step"], dtype=np.float64)
    low, high = step_range or (-np.inf, np.inf)
    shown = (step >= low) & (step <= high)
    for ax, key in zip(axes, keys):
        values = np.asarray(logs[key], dtype=np.float64)
        ax.plot(step[shown], values[shown], ".-", ms=2, lw=0.6)
        name = "Hessian" if key.startswith("hessian") else "NTK"
        if name == "Hessian" and learning_rate:
            ax.axhline(2.0 / learning_rate, color="k", ls="--", lw=0.8, label="2/η")
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(f"{name} λ_max")
        if np.all(values[shown] > 0):
            ax.set_yscale("log")
    axes[len(keys) - 1].set_xlabel("step t")
    return axes[0].figure


def sweep(result, *, reference=None, title=None, series_label=None):
    """A sweep's runs: every seed a dot, every cell's median a bar, one panel per metric.

    Args:
        result: a sweep result (`width_sweep.run`, `overparam.run`, or its JSON): its `rows`,
            `cell` (`[x, series]` field names, e.g. `["width", "amplitude"]`) and `metrics`
            (`{field: label}`).
        reference: rows of reference runs, drawn as crosses where they have the metric.
        title: the figure's title.
        series_label: series value -> its legend label.
    """
    rows = result["rows"]
    x_name, series_name = result["cell"]
    series_label = series_label or (lambda v: f"{series_name} {v}")
    metrics = {k: v for k, v in result["metrics"].items()
               if any(r.get(k) is not None for r in rows)}
    xs = sorted({r[x_name] for r in rows}, key=lambda v: (v is not None, v))
    series = sorted({r[series_name] for r in rows})
    fig, axes = _figure(1, len(metrics), width=max(4.5, 1 + 0.5 * len(xs) * len(series)),
                        height=4.0)
    sets = [("", rows, "o")] + ([(" reference", reference, "x")] if reference else [])
    slots = len(series) * len(sets)
    rng = np.random.default_rng(0)
    for ax, (metric, ylabel) in zip(axes[0], metrics.items()):
        for k, (suffix, runs, marker) in enumerate(sets):
            for j, value in enumerate(series):
                offset = ((k * len(series) + j) - (slots - 1) / 2) * 0.8 / slots
                label = series_label(value) + suffix
                for i, x in enumerate(xs):
                    v = [r[metric] for r in runs if r.get(metric) is not None
                         and r[x_name] == x and r[series_name] == value]
                    if not v:
                        continue
                    ax.scatter(i + offset + rng.uniform(-0.03, 0.03, len(v)), v, s=12,
                               marker=marker, color=f"C{j}", alpha=0.6, lw=0.8)
                    ax.plot([i + offset - 0.08, i + offset + 0.08], [np.median(v)] * 2,
                            color=f"C{j}", lw=2, label=label)
                    label = None
        ax.set_xticks(range(len(xs)), ["any" if x is None else str(x) for x in xs])
        ax.set_xlabel(x_name)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle((title + " " if title else "") + "(dots: runs, bars: medians)", fontsize=9)
    return fig
