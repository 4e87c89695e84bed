"""Fig. 4 of the paper: one spiral run under the dynamical loss.

Panels: Γ_i(t); F(t); F(t) − F(t−1); training accuracy; Hessian λ_max with the stability line
2/η; NTK λ_max. Left column: the whole run; right column: one period, zoomed.
"""

import numpy as np

from keras_dynloss.experiments import sweep
from keras_dynloss.experiments._losses import SPIRAL
from keras_dynloss.experiments.provenance import provenance

__all__ = ["run", "figure", "write", "DEFAULTS", "QUICK"]

DEFAULTS = dict(width=100, amplitude=70.0, period=5000, steps=70000, seed=0, probe_every=250,
                dtype="float64", learning_rate=1.0, loss="ce", validation_seed=None)
QUICK = dict(DEFAULTS, period=100, steps=600, probe_every=50)
MAX_POINTS = 4000
#: The line panels of `figure`'s columns (whole run, zoom): (row, series, y label, y scale).
_LINES = ([(1, "loss", "F(t)", "log"), (2, "abs_dloss_max", "max |F(t)−F(t−1)|", "log"),
           (3, "accuracy", "train accuracy", "linear")],
          [(1, "loss", "F(t)", "log"), (2, "dloss", "F(t)−F(t−1)", "symlog"),
           (3, "accuracy", "train accuracy", "linear")])


def run(*, zoom_period=None, progress=True, **options):
    """Trains once, recording F(t) and the accuracy at every step, with curvature probes.

    Args:
        zoom_period: the period shown zoomed (default: the one with F's largest one-step jump).
        progress: as for `_spiral.train_spiral`.
        **options: over `DEFAULTS`: `probe_every`, the Hessian and NTK probe interval in steps
            (0: none); the others as for `_spiral.train_spiral` (F(t) is the `loss` objective).

    Returns:
        A JSON-ready dict: `config`, `provenance`, `final_acc`, `final_loss`, `val_acc`,
        `max_acc`, `seconds`; `series` (`step`, `loss`, `accuracy` at up to 4000 evenly spread
        steps, `abs_dloss_max`: the largest |F(t) − F(t−1)| since the previous one); `zoom`
        (`step`, `loss`, `dloss`, `accuracy` at every step of the zoomed period); `gamma`
        (`step`, `values` of shape (steps shown, C)); `probe` (the probe's history).

    Example:
        >>> result = run(**QUICK, progress=False)
    """
    from keras_dynloss.experiments._spiral import train_spiral

    cfg, info = sweep.options(DEFAULTS, options), provenance()
    res = train_spiral(record=True, progress=progress, **cfg)
    steps, period = cfg["steps"], cfg["period"]
    f, acc = res["loss"], res["accuracy"]
    dloss = np.diff(f, prepend=np.nan)
    jumps = np.nan_to_num(np.abs(dloss), nan=0.0)
    if zoom_period is None:  # the dynamical period with the largest jump of F
        dynamical = max(1, (steps - period) // period)
        zoom_period = (int(np.argmax(jumps[:dynamical * period].reshape(dynamical, -1).max(1)))
                       if steps >= dynamical * period else 0)
    z0, z1 = zoom_period * period, min((zoom_period + 1) * period, steps)
    stride = max(1, -(-steps // MAX_POINTS))
    shown = np.arange(0, steps, stride)
    jump_max = np.pad(jumps, (0, (-steps) % stride)).reshape(-1, stride).max(1)
    return dict(
        experiment="fig4",
        config=dict(cfg, static_after=max(steps - period, 0), optimizer="SGD (full batch)",
                    dataset=SPIRAL),
        provenance=info, final_acc=res["final_acc"], final_loss=res["final_loss"],
        val_acc=res.get("val_acc"), max_acc=float(np.nanmax(acc)), seconds=res["seconds"],
        series=dict(step=shown, loss=f[shown], accuracy=acc[shown], abs_dloss_max=jump_max),
        zoom=dict(period_index=zoom_period, step=np.arange(z0, z1), loss=f[z0:z1],
                  dloss=dloss[z0:z1], accuracy=acc[z0:z1]),
        gamma=dict(step=res["gamma_steps"], values=res["gamma"]),
        probe=res.get("probe", {}))


def figure(result):
    """The 6x2 panel figure of `run`'s result (or its JSON), a `matplotlib.figure.Figure`."""
    from keras_dynloss import plot

    cfg, p = result["config"], result["probe"]
    s, z, g = result["series"], result["zoom"], result["gamma"]
    # A fixed layout: a layout engine would measure every tick label, half the time.
    fig, axes = plot._figure(6, 2, width=5.5, height=2.3, layout=None)
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.04, top=0.95, wspace=0.18,
                        hspace=0.12)
    z0, z1 = (z["step"][0], z["step"][-1]) if len(z["step"]) else (0, cfg["steps"])
    gamma_steps, gamma = np.asarray(g["step"]), np.asarray(g["values"])
    for col, (lo, hi, data) in enumerate(((0, cfg["steps"], s), (z0, z1, z))):
        inside = (gamma_steps >= lo) & (gamma_steps <= hi)
        plot.gamma(None, gamma_steps[inside], weights=gamma[inside], ax=axes[0, col])
        for row, series, ylabel, scale in _LINES[col]:
            axes[row, col].plot(data["step"], data[series], lw=0.6)
            axes[row, col].set_ylabel(ylabel)
            axes[row, col].set_yscale(scale, **({"linthresh": 1e-5} if scale == "symlog" else {}))
        axes[3, col].set_ylim(0, 1.02)
        axes[4, col].set_ylabel("Hessian λ_max")
        axes[5, col].set_ylabel("NTK λ_max")
        if p.get("step"):
            plot.probe(p, learning_rate=cfg["learning_rate"], axes=axes[4:, col],
                       step_range=(lo, hi))
        for ax in axes[:, col]:
            ax.set_xlim(lo, hi)
            ax.set_xlabel("")
            if col == 0 and cfg["steps"] > cfg["period"]:
                ax.axvspan(z0, z1, color="0.9", zorder=-1)
        axes[-1, col].set_xlabel("step t")
    axes[0, 0].set_title("whole run")
    axes[0, 1].set_title(f"zoom: period {z['period_index']} (steps {z0}–{z1})")
    fig.suptitle(f"Fig. 4 — spiral, width {cfg['width']}, A={cfg['amplitude']:g}, "
                 f"T={cfg['period']}, η={cfg['learning_rate']:g}, final train accuracy "
                 f"{result['final_acc']:.3f}", fontsize=10)
    return fig


def write(result, out):
    """Writes `fig4.json` and `.png` into `out`; returns the paths written."""
    return sweep.write(result, out, "fig4", figure=lambda: figure(result), digits=6,
                       indent=None, dpi=80)
