"""Fig. 4 of the paper: one spiral run under the dynamical loss.

Panels: Γ_i(t); F(t); F(t) − F(t−1); training accuracy; Hessian λ_max with the
2/η stability line; NTK λ_max. Left column: the whole run; right column: a zoom
into one period.
"""

import os

import numpy as np

from keras_dynloss.experiments._common import write_json
from keras_dynloss.experiments._spiral import train_spiral

__all__ = ["run", "plot", "DEFAULTS", "QUICK"]

DEFAULTS = dict(width=100, amplitude=70.0, period=5000, steps=70000, seed=0,
                probe_every=250, dtype="float64")
QUICK = dict(width=100, amplitude=70.0, period=100, steps=600, seed=0,
             probe_every=50, dtype="float64")


def _thin(series, max_points=4000):
    """Every k-th element so that at most ``max_points`` remain (with indices)."""
    series = np.asarray(series)
    k = max(1, int(np.ceil(series.size / max_points)))
    idx = np.arange(0, series.size, k)
    return idx, series[idx]


def run(*, width=100, amplitude=70.0, period=5000, steps=70000, seed=0, probe_every=250,
        dtype="float64", learning_rate=1.0, progress=True, zoom_period=None, loss="ce",
        validation_seed=None):
    """Trains once with per-step recording and curvature probes.

    Args:
        width, amplitude, period, steps, seed, dtype, learning_rate: as for
            :func:`~keras_dynloss.experiments._spiral.train_spiral`.
        probe_every: Hessian / NTK probe interval in steps (0: no probes).
        progress: progress bar on stderr.
        zoom_period: index of the period shown zoomed (default: the dynamical
            period with the largest one-step jump of F, an instability).
        loss: the objective, ``"ce"``, ``"mse"``, ``"dmse"`` or
            ``"dmse-componentwise"`` (F(t) is that objective).
        validation_seed: noise seed of a held-out spiral for ``val_acc`` (None: none).

    Returns:
        A JSON-ready dict: ``config``, ``final_acc``, ``final_loss``,
        ``seconds``, ``series`` (``step``, ``loss``, ``accuracy`` at up to
        4000 points; ``loss_full`` / ``dloss`` not stored), ``zoom`` (per-step
        series over the zoom period), ``gamma`` (steps and Γ rows), ``probe``.
    """
    loss_name = loss  # ``loss`` holds F(t) below
    res = train_spiral(width=width, amplitude=amplitude, period=period, steps=steps,
                       seed=seed, dtype=dtype, learning_rate=learning_rate, record=True,
                       probe_every=probe_every, progress=progress, label="fig4",
                       loss=loss, validation_seed=validation_seed)
    loss, acc = res["loss"], res["accuracy"]
    dloss = np.diff(loss, prepend=np.nan)
    num_dyn = max(1, (steps - period) // period)
    if zoom_period is None:
        # The dynamical period with the largest jump |F(t) - F(t-1)| (an instability).
        jumps = np.abs(np.nan_to_num(dloss[: num_dyn * period], nan=0.0))
        zoom_period = int(np.argmax(jumps.reshape(num_dyn, -1).max(1))) \
            if jumps.size == num_dyn * period else 0
    z0, z1 = zoom_period * period, min((zoom_period + 1) * period, steps)
    idx, loss_thin = _thin(loss)
    block = int(idx[1] - idx[0]) if idx.size > 1 else 1
    absd = np.abs(np.nan_to_num(dloss, nan=0.0))
    pad = (-absd.size) % block
    dl_max = np.pad(absd, (0, pad)).reshape(-1, block).max(1)[: idx.size]
    zoom_idx = np.arange(z0, z1)
    out = dict(
        experiment="fig4",
        config=dict(loss=loss_name, width=width, amplitude=amplitude, period=period, steps=steps,
                    seed=seed, validation_seed=validation_seed,
                    probe_every=probe_every, dtype=dtype, learning_rate=learning_rate,
                    static_after=max(steps - period, 0), optimizer="SGD (full batch)",
                    dataset="spiral(points_per_class=100, num_classes=3, revolutions=4, "
                            "noise=0.2, seed=0)"),
        final_acc=res["final_acc"],
        final_loss=res["final_loss"],
        val_acc=res.get("val_acc"),
        max_acc=float(np.nanmax(acc)),
        seconds=res["seconds"],
        series=dict(step=idx.tolist(), loss=loss_thin.tolist(),
                    accuracy=acc[idx].tolist(), abs_dloss_max=dl_max.tolist()),
        zoom=dict(period_index=zoom_period, step=zoom_idx.tolist(),
                  loss=loss[z0:z1].tolist(), dloss=dloss[z0:z1].tolist(),
                  accuracy=acc[z0:z1].tolist()),
        gamma=dict(step=res["gamma_steps"].tolist(), values=res["gamma"].tolist()),
        probe=res.get("probe", {}),
    )
    return out


def plot(result, path):
    """Writes the 6x2 panel figure of :func:`run`'s result to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    s, z, g, p = result["series"], result["zoom"], result["gamma"], result["probe"]
    zs = np.asarray(z["step"])
    z0, z1 = (zs[0], zs[-1]) if zs.size else (0, cfg["steps"])
    gs, gv = np.asarray(g["step"]), np.asarray(g["values"])
    fig, axes = plt.subplots(6, 2, figsize=(11, 14), sharex="col")
    colors = ["C0", "C1", "C2", "C3", "C4", "C5"]
    for col, (lo, hi) in enumerate(((0, cfg["steps"]), (z0, z1))):
        ax = axes[0, col]
        m = (gs >= lo) & (gs <= hi)
        for i in range(gv.shape[1]):
            ax.plot(gs[m], gv[m, i], color=colors[i % 6], label=f"Γ_{i}")
        ax.set_ylabel("Γ_i(t)")
        if col == 0:
            ax.legend(loc="upper right", fontsize=7)
        ax = axes[1, col]
        if col == 0:
            ax.plot(s["step"], s["loss"], lw=0.6)
        else:
            ax.plot(zs, z["loss"], lw=0.6)
        ax.set_ylabel("F(t)")
        ax.set_yscale("log")
        ax = axes[2, col]
        if col == 0:
            ax.plot(s["step"], s["abs_dloss_max"], lw=0.6)
            ax.set_ylabel("max |F(t)−F(t−1)|")
            ax.set_yscale("log")
        else:
            ax.plot(zs, z["dloss"], lw=0.6)
            ax.set_ylabel("F(t)−F(t−1)")
            ax.set_yscale("symlog", linthresh=1e-5)
        ax = axes[3, col]
        if col == 0:
            ax.plot(s["step"], s["accuracy"], lw=0.6)
        else:
            ax.plot(zs, z["accuracy"], lw=0.6)
        ax.set_ylabel("train accuracy")
        ax.set_ylim(0, 1.02)
        ax = axes[4, col]
        if p.get("hessian_max_eig"):
            ps, h = np.asarray(p["step"]), np.asarray(p["hessian_max_eig"])
            m = (ps >= lo) & (ps <= hi)
            ax.plot(ps[m], h[m], ".-", ms=2, lw=0.6)
        ax.axhline(2.0 / cfg["learning_rate"], color="k", ls="--", lw=0.8, label="2/η")
        ax.set_ylabel("Hessian λ_max")
        ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize=7)
        ax = axes[5, col]
        if p.get("ntk_max_eig"):
            ps, n = np.asarray(p["step"]), np.asarray(p["ntk_max_eig"])
            m = (ps >= lo) & (ps <= hi)
            ax.plot(ps[m], n[m], ".-", ms=2, lw=0.6)
        ax.set_ylabel("NTK λ_max")
        ax.set_yscale("log")
        ax.set_xlabel("step t")
        for r in range(6):
            axes[r, col].set_xlim(lo, hi)
            if col == 0 and cfg["steps"] > cfg["period"]:
                axes[r, col].axvspan(z0, z1, color="0.9", zorder=-1)
    axes[0, 0].set_title("whole run")
    axes[0, 1].set_title(f"zoom: period {z['period_index']} (steps {z0}–{z1})")
    fig.suptitle(
        f"Fig. 4 — spiral, width {cfg['width']}, A={cfg['amplitude']:g}, T={cfg['period']}, "
        f"η={cfg['learning_rate']:g}, final train acc {result['final_acc']:.3f}", fontsize=10)
    # A fixed layout: tight_layout measures every tick label, half the plot's time.
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.04, top=0.95, wspace=0.18,
                        hspace=0.12)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write(result, out_dir):
    """Writes ``fig4.json`` and ``fig4.png`` into ``out_dir``; returns both paths."""
    jpath = write_json(result, out_dir, "fig4", digits=6, indent=None)
    ppath = plot(result, os.path.join(out_dir, "fig4.png"))
    return jpath, ppath
