"""The command line: every command end to end with tiny settings, resume, flags, quiet start."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import numpy_gamma
from keras_dynloss import cli
from keras_dynloss.datasets import FASHION_MNIST_DIRS
from keras_dynloss.experiments import workers

PNG = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
HAVE_IDX = os.path.isdir(FASHION_MNIST_DIRS[0])


def _outputs(out, command):
    text = (out / f"{command}.json").read_text()
    assert "NaN" not in text  # strict JSON
    assert (out / f"{command}.png").read_bytes()[:8] == PNG
    return json.loads(text)


def test_fig4_probes_off(tmp_path, capsys):
    cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "60", "--period", "20",
              "--probe-every", "0", "--width", "8", "--no-progress"])
    res = _outputs(tmp_path, "fig4")
    assert res["config"]["steps"] == 60 and res["config"]["static_after"] == 40
    assert res["probe"] == {} and res["provenance"]["backend"] == "tensorflow"
    loss = np.array(res["series"]["loss"], float)
    assert loss.shape == (60,) and np.all(np.isfinite(loss))
    assert abs(loss[0] - np.log(3)) < 0.2  # small logits of 3 classes
    assert abs(res["series"]["accuracy"][-1] - res["final_acc"]) < 0.05
    steps, gamma = np.array(res["gamma"]["step"]), np.array(res["gamma"]["values"])
    np.testing.assert_allclose(gamma, [numpy_gamma(t, 3, 70, 20, static_after=40)
                                       for t in steps], rtol=1e-5)
    assert "final training accuracy" in capsys.readouterr().out


def test_fig4_probes(tmp_path):
    cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "100", "--period", "50",
              "--probe-every", "50", "--width", "8", "--no-progress"])
    probe = _outputs(tmp_path, "fig4")["probe"]
    assert probe["step"] == [0, 50, 100]
    assert all(v > 0 for v in probe["hessian_max_eig"] + probe["ntk_max_eig"])


def test_fig4_dmse_records_the_mse_and_validation(tmp_path, capsys):
    cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "40", "--period", "20",
              "--probe-every", "0", "--width", "8", "--loss", "dmse",
              "--validation-seed", "0", "--no-progress"])
    res = _outputs(tmp_path, "fig4")
    # Γ(0) = 1: F(0) is the MSE (1/3) Σ_i (y_i - f_i)² of near-zero outputs, about 1/3.
    assert res["config"]["loss"] == "dmse" and abs(res["series"]["loss"][0] - 1 / 3) < 0.1
    assert res["val_acc"] == res["final_acc"]  # validation on the training spiral itself
    assert "validation accuracy" in capsys.readouterr().out


def test_width_sweep_writes_runs_and_resumes(tmp_path, capsys):
    args = ["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "4,8",
            "--amplitudes", "1,70", "--steps", "40", "--period", "20", "--no-progress"]
    cli.main(args + ["--seeds", "0-1"])
    res = _outputs(tmp_path, "width-sweep")
    rows = res["rows"]
    assert {(r["width"], r["amplitude"], r["seed"]) for r in rows} == {
        (w, a, s) for w in (4, 8) for a in (1.0, 70.0) for s in (0, 1)}
    assert all(0 <= r["final_acc"] <= 1 and 0 <= r["val_acc"] <= 1 for r in rows)
    assert res["provenance"]["git_commit"] == rows[0]["git_commit"]
    for s in res["summary"]:  # each cell's two seeds, recomputed here
        acc = [r["final_acc"] for r in rows if (r["width"], r["amplitude"]) == (
            s["width"], s["amplitude"])]
        assert s["n"] == 2 and s["final_acc"]["median"] == pytest.approx(np.mean(acc))
    assert [(c["metric"], c["width"]) for c in res["comparison"]] == [
        ("final_acc", 4), ("final_acc", 8), ("val_acc", 4), ("val_acc", 8)]
    out = capsys.readouterr().out
    assert "DCE A=70" in out and out.split("\nwrote")[0].strip() == (
        tmp_path / "width-sweep.md").read_text().strip()
    lines = (tmp_path / "width-sweep.jsonl").read_text().splitlines()
    assert len(lines) == 9 and "settings" in json.loads(lines[0])

    cli.main(args + ["--seeds", "0-2", "--resume"])
    again = _outputs(tmp_path, "width-sweep")
    assert again["reused_runs"] == 8 and len(again["rows"]) == 12
    first = {(r["width"], r["amplitude"], r["seed"]): r for r in rows}
    for r in again["rows"]:
        if r["seed"] < 2:  # read back, not trained again (`seconds` would differ)
            assert r == first[(r["width"], r["amplitude"], r["seed"])]


def test_width_sweep_reference_needs_the_same_settings(tmp_path):
    from keras_dynloss.experiments.width_sweep import REFERENCE

    data = json.loads((ROOT / REFERENCE).read_text())
    assert "JAX float64" in data["source"] and len(data["runs"]) >= 56
    with pytest.warns(UserWarning, match="Not comparing with the reference.*'steps': 20"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "16",
                  "--amplitudes", "1", "--seeds", "0", "--steps", "20", "--period", "10",
                  "--reference", str(ROOT / REFERENCE), "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    assert res["reference_comparison"] == [] and "'period': 10" in res["reference_note"]


def test_width_sweep_mse_losses(tmp_path, capsys):
    cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "8",
              "--amplitudes", "1,70", "--seeds", "0", "--steps", "40", "--period", "20",
              "--loss", "dmse-componentwise", "--validation-seed", "none", "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    assert res["config"]["validation_seed"] is None and list(res["metrics"]) == ["final_acc"]
    assert all(r["val_acc"] is None for r in res["rows"])
    assert "DMSE (per component) A=70" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Invalid value for argument `amplitude`"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--loss", "mse"])
    with pytest.raises(ValueError, match="Invalid value for argument `validation_seed`"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--validation-seed", "0"])


@pytest.mark.skipif(not HAVE_IDX, reason="needs Debian's dataset-fashion-mnist")
def test_overparam_keeps_curves_and_resumes(tmp_path, capsys):
    args = ["overparam", "--quick", "--data", "idx", "--out", str(tmp_path), "--no-progress"]
    cli.main(args + ["--seeds", "0"])
    res = _outputs(tmp_path, "overparam")
    assert [(r["amplitude"], r["period"]) for r in res["rows"]] == [(1.0, None), (10.0, 1)]
    assert res["config"]["parameters"] == 784 * 32 + 32 + 32 * 10 + 10
    assert res["config"]["data"] == "Fashion-MNIST (idx)"
    for r in res["rows"]:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert {k: len(v) for k, v in r["curves"].items()} == dict.fromkeys(
            ("loss", "train_ce", "train_acc", "test_ce", "test_acc"), 2)  # 2 epochs
        # The last epoch's test curve is the final weights on all 200 test images.
        assert r["curves"]["test_acc"][-1] == pytest.approx(r["test_acc"], abs=1e-6)
    (test,) = res["comparison"]
    assert (test["n_x"], test["n_y"], test["amplitude"]) == (1, 1, 10.0)
    assert "| A | period (epochs) | n |" in capsys.readouterr().out

    cli.main(args + ["--seeds", "0,1", "--resume"])
    both = _outputs(tmp_path, "overparam")
    assert both["reused_runs"] == 2 and [s["n"] for s in both["summary"]] == [2, 2]
    with pytest.raises(ValueError, match=r"Invalid value for argument `settings`.*'width'"):
        cli.main(args + ["--resume", "--width", "8"])


def test_overparam_any_tfds_set_with_the_myrtle_cnn(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=300):
        cli.main(["overparam", "--quick", "--data", "tfds:cifar10", "--width", "4",
                  "--train-size", "100", "--test-size", "20", "--batch-size", "25",
                  "--momentum", "0.9", "--out", str(tmp_path), "--no-progress"])
    cfg = _outputs(tmp_path, "overparam")["config"]
    assert cfg["data"] == "tfds cifar10" and cfg["model"] == "Myrtle CNN, width 4"
    assert (cfg["train_size"], cfg["test_size"], cfg["momentum"]) == (100, 20, 0.9)
    # 3x3 convolutions 3->4, then 4->4 three times, with biases; Dense(10)
    assert cfg["parameters"] == (27 * 4 + 4) + 3 * (9 * 16 + 4) + (4 * 10 + 10)


@pytest.mark.parametrize("argv", [
    ["fig4", "--steps", "0"], ["overparam", "--momentum", "1.5"], ["nope"],
    ["overparam", "--data", "cifar10"], ["width-sweep", "--seeds", "a-b"],
    ["width-sweep", "--learning-rate", "0"], ["fig4", "--amplitude", "0.5"],
])
def test_bad_flags_exit(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    assert "error" in capsys.readouterr().err


def test_seed_ranges():
    assert cli._ints("0-2,5") == (0, 1, 2, 5) and cli._ints("7") == (7,)


@pytest.mark.parametrize("argv, command_line, threads", [
    (["fig4"], True, 1),  # python -m keras_dynloss fig4: one thread
    (["width-sweep"], True, 1),
    (["overparam"], True, 0),  # the backend's default
    (["fig4"], False, 0),  # cli.main([...]) from a program: its threads are its own
    (["fig4", "--threads", "3"], False, 3),
])
def test_threads(monkeypatch, argv, command_line, threads):
    calls = []
    monkeypatch.setattr(workers, "set_cpu_threads", calls.append)
    monkeypatch.setitem(cli._COMMANDS, argv[0], lambda args: [])
    monkeypatch.setattr(sys, "argv", ["keras-dynloss", *argv])
    assert cli.main(None if command_line else argv) == 0
    assert calls == [threads]


@pytest.mark.parametrize("user, expected", [(None, "2"), ("0", "0")])
def test_log_level_unless_the_user_set_it(monkeypatch, user, expected):
    if user is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user)
    monkeypatch.setattr(workers, "set_cpu_threads", lambda n: False)
    monkeypatch.setitem(cli._COMMANDS, "fig4", lambda args: [])
    cli.main(["fig4"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == expected


def test_the_command_line_is_quiet(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run(
        [sys.executable, "-m", "keras_dynloss", "fig4", "--quick", "--steps", "20",
         "--period", "10", "--width", "4", "--probe-every", "0", "--no-progress", "--out",
         str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    # XLA's INFO line at the first compile: shown unless the level was set before TensorFlow
    # loaded.
    assert "Compiled cluster using XLA" not in run.stderr


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "keras_dynloss", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("fig4", "width-sweep", "overparam"):
        assert command in out.stdout


def test_the_command_line_loads_keras_without_unused_integrations_and_restores_them():
    code = ("import sys; sys.argv[0] = 'keras-dynloss'; import keras_dynloss, gc; "
            "print(sorted(n for n in ('jax', 'sklearn', 'IPython', 'scipy', 'matplotlib') "
            "if n in sys.modules), gc.isenabled()); import scipy.stats, sklearn, matplotlib; "
            "print(scipy.stats.norm.cdf(0.0))")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[] True", "0.5"]


def test_the_command_line_hides_nothing_when_keras_json_names_another_backend(tmp_path):
    pytest.importorskip("jax")
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    code = ("import sys; sys.argv[0] = 'keras-dynloss'; import keras_dynloss, keras; "
            "print(keras.backend.backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "jax"
