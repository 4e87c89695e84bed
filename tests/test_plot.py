"""keras_dynloss.plot: what each figure draws, against NumPy re-derivations of the data."""

import sys

import numpy as np
import pytest

import keras_dynloss as kd
from keras_dynloss import plot
from conftest import numpy_gamma

pytestmark = pytest.mark.multi_backend
matplotlib = pytest.importorskip("matplotlib")


def _lines(ax):
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
            for line in ax.get_lines()}


@pytest.mark.parametrize("make", [
    lambda: kd.ClassWeightSchedule(3, amplitude=70, period=20, static_after=60),
    lambda: kd.DynamicalLoss(3, amplitude=70, period=20, static_after=60),
])
def test_gamma_of_a_schedule_or_a_loss(make):
    fig = plot.gamma(make(), (5, 80))
    lines = _lines(fig.axes[0])
    for i in range(3):
        steps, values = lines[f"Γ_{i}"]
        np.testing.assert_array_equal(steps, np.arange(5, 80))
        ref = [numpy_gamma(t, 3, 70, 20, static_after=60)[i] for t in steps]
        np.testing.assert_allclose(values, ref, rtol=1e-5)


def test_gamma_evenly_spread_steps_and_given_weights():
    fig = plot.gamma(kd.ClassWeightSchedule(2, amplitude=5, period=1000), 100_000,
                     max_points=101)
    steps, _ = _lines(fig.axes[0])["Γ_0"]
    np.testing.assert_array_equal(steps, np.arange(0, 100_000, 999.99).astype(int))
    fig = plot.gamma(None, [3, 7], weights=[[1.0, 2.0], [0.5, 1.5]])
    np.testing.assert_array_equal(_lines(fig.axes[0])["Γ_1"][1], [2.0, 1.5])
    with pytest.raises(ValueError, match="Invalid value for argument `schedule`"):
        plot.gamma("triangle", 10)


def test_history_panels():
    logs = {"loss": [2.0, 1.0, 0.5], "ce": [1.1, 0.9, 0.4], "val_ce": [1.2, 1.0, 0.6],
            "accuracy": [0.3, 0.5, 0.7], "gamma_0_max": [2.9, 1.0, 2.0],
            "gamma_0_mean": [1.5, 1.0, 1.2], "gamma_1_max": [1.0, 2.9, 1.0],
            "gamma_1_mean": [0.5, 1.5, 0.8], "emphasized_class": [0, 1, 0]}
    history = type("History", (), {"history": logs})()  # what fit returns
    fig = plot.history(history)
    losses, gamma, emphasized = fig.axes
    lines = _lines(losses)
    assert set(lines) == {"loss", "ce", "val_ce"}
    np.testing.assert_array_equal(lines["val_ce"][0], [1, 2, 3])  # epochs from 1
    np.testing.assert_array_equal(lines["ce"][1], logs["ce"])
    lines = _lines(gamma)
    assert set(lines) == {"Γ_0 max", "Γ_0 mean", "Γ_1 max", "Γ_1 mean"}
    np.testing.assert_array_equal(lines["Γ_1 mean"][1], logs["gamma_1_mean"])
    (step,) = emphasized.get_lines()
    np.testing.assert_array_equal(step.get_ydata(), [0, 1, 0])
    assert len(plot.history({"loss": [1.0, 0.5]}).axes) == 1
    with pytest.raises(ValueError, match="Invalid value for argument `history`"):
        plot.history({"accuracy": [0.5]})


def test_probe_panels_and_stability_line():
    logs = {"step": [0, 25, 50], "epoch": [0, 0, 1], "hessian_max_eig": [0.5, 1.9, 2.1],
            "ntk_max_eig": [10.0, 30.0, 40.0]}
    fig = plot.probe(logs, learning_rate=0.5)
    hessian, ntk = fig.axes
    lines = _lines(hessian)
    np.testing.assert_array_equal(lines["2/η"][1], [4.0, 4.0])
    (data,) = [v for k, v in lines.items() if k != "2/η"]
    np.testing.assert_array_equal(data[0], [0, 25, 50])
    np.testing.assert_array_equal(data[1], [0.5, 1.9, 2.1])
    (line,) = ntk.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), [10.0, 30.0, 40.0])
    fig = plot.probe(logs, step_range=(20, 60))
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), [25, 50])
    with pytest.raises(ValueError, match="Invalid value for argument `history`"):
        plot.probe({"hessian_max_eig": [1.0]})


def test_sweep_medians_per_cell():
    rows = [dict(width=w, amplitude=a, seed=s, final_acc=0.1 * s + w / 100 + (a > 1) * 0.3,
                 val_acc=None) for w in (8, 16) for a in (1.0, 70.0) for s in range(3)]
    result = dict(rows=rows, cell=["width", "amplitude"],
                  metrics={"final_acc": "training accuracy", "val_acc": "validation"})
    reference = [dict(width=16, amplitude=70.0, seed=0, final_acc=0.95)]
    fig = plot.sweep(result, reference=reference)
    (ax,) = fig.axes  # no run has val_acc: one panel
    bars = {}
    for line in ax.get_lines():  # one bar per cell and set, at the cell's median
        x, y = line.get_xdata(), line.get_ydata()
        bars[(round(float(np.mean(x))), y[0])] = line.get_color()
    for i, w in enumerate((8, 16)):
        for a in (1.0, 70.0):
            median = np.median([r["final_acc"] for r in rows
                                if (r["width"], r["amplitude"]) == (w, a)])
            assert any(k[0] == i and k[1] == pytest.approx(median) for k in bars)
    assert any(k == (1, 0.95) for k in bars)  # the reference seed's median
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16"]


def test_matplotlib_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "keras_dynloss\[plot\]"'):
        plot.probe({"step": [0], "hessian_max_eig": [1.0]})


def test_figures_leave_pyplot_and_the_backend_alone(tmp_path):
    from keras_dynloss.experiments import fig4

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend that `matplotlib.use("Agg")` would replace
    steps = np.arange(40)
    result = dict(
        config=dict(steps=40, period=10, learning_rate=1.0, width=4, amplitude=5.0),
        final_acc=0.5, probe={"step": [0, 20], "hessian_max_eig": [1.0, 3.0]},
        series=dict(step=steps, loss=np.linspace(1, 0.1, 40), accuracy=np.full(40, 0.5),
                    abs_dloss_max=np.full(40, 0.01)),
        zoom=dict(period_index=1, step=steps[10:20], loss=np.ones(10), dloss=np.zeros(10),
                  accuracy=np.ones(10)),
        gamma=dict(step=steps, values=np.ones((40, 3))))
    try:
        paths = fig4.write(result, str(tmp_path))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(previous)
    assert open(paths[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()  # no figure left open in pyplot
