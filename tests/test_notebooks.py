"""The example notebooks run end to end at small size in a real Jupyter kernel.

Each notebook is executed from a copy (the stored outputs of the full-size run are never
rewritten) with `KERAS_DYNLOSS_NOTEBOOK_SMALL=1`, in the kernel named `python3` (CI:
`python -m ipykernel install --user --name python3`), importing this checkout's package. Checked:
no cell fails or prints a warning (it would land in the reader's notebook), every figure is
drawn, and the values the notebook computes are sensible and, where a short run is enough to
tell, that the dynamical loss behaves as the notebook says. TensorFlow only (not `multi_backend`).
"""

import json
import os
import pathlib

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Appended to the copy: the notebook's results as one JSON line.
REPORT = {
    "quickstart_spiral": "accuracy, {name: np.asarray(p.history['hessian_max_eig']).tolist() "
                         "for name, (_, _, p, _) in runs.items()}, "
                         "dynamical_loss.weights_at(np.arange(PERIOD // 2, 3 * PERIOD, PERIOD))"
                         ".tolist()",
    "overparam_fashion_mnist": "rows, source, len(x_train), len(x_test)",
}


def _execute(name, tmp_path, monkeypatch):
    path = EXAMPLES / f"{name}.ipynb"
    stored = path.read_bytes()
    nb = nbformat.reads(stored.decode(), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json\nprint(json.dumps([{REPORT[name]}]))"))
    monkeypatch.setenv("KERAS_DYNLOSS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # TensorFlow's C++ start-up lines go to the kernel's own stderr, not into the cells.
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    assert path.read_bytes() == stored
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return nb, outputs, json.loads(nb.cells[-1].outputs[-1]["text"])


def _check_clean(nb, outputs, figures):
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = [o["text"] for o in outputs if o.get("name") == "stderr"]
    assert not stderr, stderr
    # TensorFlow's Python warnings (e.g. tf.function retracing) are printed to stdout.
    noise = [o["text"] for o in outputs if "WARNING" in o.get("text", "")]
    assert not noise, noise
    assert sum("image/png" in o.get("data", {}) for o in outputs) == figures
    source = "\n".join(c.source for c in nb.cells)
    assert "matplotlib.use" not in source and "plt.show" not in source


def test_quickstart_spiral(tmp_path, monkeypatch):
    nb, outputs, (accuracy, hessian, gamma) = _execute("quickstart_spiral", tmp_path,
                                                        monkeypatch)
    _check_clean(nb, outputs, figures=4)
    text = "".join(o.get("text", "") for o in outputs)
    line = (f"training accuracy: cross-entropy {accuracy['cross-entropy']:.3f}, "
            f"dynamical loss {accuracy['dynamical loss']:.3f}")
    assert line in text
    # 10000 steps from the same initial weights: the dynamical loss already leads (as in
    # test_readme.py); cross-entropy stalls near the spiral's 1/3 to 1/2.
    assert 0.3 < accuracy["cross-entropy"] < 0.6
    assert accuracy["dynamical loss"] > accuracy["cross-entropy"] + 0.05
    # A probe every 250 steps from step 0; cross-entropy trains at the edge of stability
    # (λ_max near 2/η = 2), the dynamical loss's λ_max swings far below it and back.
    for eig in hessian.values():
        assert len(eig) == 41 and all(0 < v < 10 for v in eig)
    assert 1.5 < sorted(hessian["cross-entropy"])[20] < 4.0
    assert min(hessian["dynamical loss"]) < 0.5 * min(hessian["cross-entropy"][10:])
    # The loss the notebook built: at the middle of period k, class k weighs 3·70/72 (A = 70,
    # normalised to Σ Γ_i = 3) and the others 3/72.
    expected = [[3 * (70 if i == k else 1) / 72 for i in range(3)] for k in range(3)]
    np.testing.assert_allclose(gamma, expected, rtol=1e-5)


def test_overparam_fashion_mnist(tmp_path, monkeypatch):
    nb, outputs, (rows, source, n_train, n_test) = _execute("overparam_fashion_mnist",
                                                           tmp_path, monkeypatch)
    _check_clean(nb, outputs, figures=2)
    assert source in ("keras", "idx", "tfds") and (n_train, n_test) == (500, 1000)
    assert [(r["amplitude"], r["seed"]) for r in rows] == [(1, 0), (10, 0)]
    for r in rows:  # 6 epochs: well above chance (0.1), far from fitting the training set
        assert 0.5 < r["test_acc"] < 0.9 and 0.5 < r["train_acc"] < 0.95
    text = "".join(o.get("text", "") for o in outputs)
    assert f"cross-entropy: test accuracy median {rows[0]['test_acc']:.3f}" in text
