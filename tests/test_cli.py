"""The command line: every subcommand end to end with tiny settings."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_dynloss import cli
from keras_dynloss.datasets import FASHION_MNIST_DIRS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _outputs(tmp_path, command):
    with open(tmp_path / f"{command}.json") as f:
        text = f.read()
    assert "NaN" not in text  # strict JSON
    png = (tmp_path / f"{command}.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) < 500_000
    return json.loads(text)


def test_fig4_quick(tmp_path, capsys):
    assert cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "200",
                     "--period", "50", "--probe-every", "100", "--width", "16",
                     "--no-progress"]) == 0
    res = _outputs(tmp_path, "fig4")
    assert res["config"]["steps"] == 200 and res["config"]["static_after"] == 150
    assert 0.0 <= res["final_acc"] <= 1.0
    loss = np.array(res["series"]["loss"], float)
    assert loss.shape == (200,) and np.all(np.isfinite(loss))
    # F(0) of a 3-class net with small logits is close to log 3.
    assert abs(loss[0] - np.log(3)) < 0.2
    # The per-step accuracy at the last step matches the final accuracy up to one step.
    assert abs(res["series"]["accuracy"][-1] - res["final_acc"]) < 0.05
    gamma = np.array(res["gamma"]["values"])
    steps = np.array(res["gamma"]["step"])
    np.testing.assert_allclose(gamma.sum(1), 3.0, rtol=1e-5)
    peak = gamma[steps == 25][0]  # middle of period 0: class 0 at A=70
    np.testing.assert_allclose(peak, [3 * 70 / 72, 3 / 72, 3 / 72], rtol=1e-5)
    np.testing.assert_allclose(gamma[steps >= 150], 1.0)
    # Probes at start and at steps 100 and 200, with the Hessian and the NTK.
    assert res["probe"]["step"] == [0, 100, 200]
    assert all(v > 0 for v in res["probe"]["hessian_max_eig"])
    assert all(v > 0 for v in res["probe"]["ntk_max_eig"])
    assert "final training accuracy" in capsys.readouterr().out


def test_fig4_probes_off(tmp_path):
    cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "60", "--period", "20",
              "--probe-every", "0", "--width", "8", "--no-progress"])
    res = _outputs(tmp_path, "fig4")
    assert res["probe"] == {}


def test_width_sweep_quick(tmp_path, capsys):
    cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "4,8",
              "--amplitudes", "1,70", "--seeds", "0-1", "--steps", "60", "--period", "20",
              "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    rows = res["rows"]
    assert {(r["width"], r["amplitude"], r["seed"]) for r in rows} == {
        (w, a, s) for w in (4, 8) for a in (1.0, 70.0) for s in (0, 1)}
    assert all(0 <= r["final_acc"] <= 1 and 0 <= r["val_acc"] <= 1 for r in rows)
    assert res["config"]["loss"] == "ce" and res["config"]["validation"].startswith(
        "spiral(..., seed=1)")
    assert len(res["config"]["git_commit"]) >= 7
    # The summary of each cell is that of its two seeds, recomputed here.
    for s in res["summary"]:
        acc = sorted(r["final_acc"] for r in rows
                     if (r["width"], r["amplitude"]) == (s["width"], s["amplitude"]))
        assert s["train"]["n"] == 2 and s["train"]["median"] == pytest.approx(np.mean(acc))
        assert s["train"]["std"] == pytest.approx(abs(acc[1] - acc[0]) / np.sqrt(2))
        assert s["val"]["n"] == 2
    cmp = res["amplitude_comparison"]
    assert [(c["metric"], c["width"]) for c in cmp] == [
        ("train", 4), ("train", 8), ("val", 4), ("val", 8)]
    out = capsys.readouterr().out
    assert "| width | objective | n |" in out and "DCE A=70 vs cross-entropy" in out
    assert (tmp_path / "width-sweep.md").read_text().strip() == out.split("\nwrote")[0].strip()


def test_seed_ranges():
    assert cli._ints("0-2,5") == (0, 1, 2, 5) and cli._ints("7") == (7,)
    with pytest.raises(SystemExit):
        cli.main(["width-sweep", "--seeds", "a-b"])


def test_compare_reference_by_hand():
    from keras_dynloss.experiments import width_sweep

    ours = [dict(width=16, amplitude=70.0, seed=s, final_acc=v)
            for s, v in enumerate([0.5, 0.6, 0.7])]
    ref = [dict(width=16, amplitude=70.0, seed=s, final_acc=v)
           for s, v in enumerate([0.8, 0.9, 0.95])]
    ref.append(dict(width=99, amplitude=70.0, seed=0, final_acc=0.9))
    (c,) = width_sweep.compare_reference(dict(rows=ours), ref)
    # every reference seed beats every one of ours: U = 0, exact p = 2 / C(6, 3)
    assert (c["width"], c["u"], c["effect"]) == (16, 0.0, 0.0)
    assert c["pvalue"] == pytest.approx(0.1) and c["pvalue_holm"] == pytest.approx(0.1)
    assert not c["significant"] and c["method"] == "exact"
    assert c["ref"]["median"] == pytest.approx(0.9) and c["ref"]["above"] == 1
    assert c["ours"]["iqr"] == pytest.approx(0.1)


def test_width_sweep_reference_needs_the_same_settings(tmp_path):
    from keras_dynloss.experiments.width_sweep import REFERENCE

    ref = Path(__file__).resolve().parents[1] / REFERENCE
    data = json.loads(ref.read_text())
    assert "JAX float64" in data["source"] and "provenance" in data and len(data["runs"]) >= 56
    with pytest.warns(UserWarning, match="Not comparing with the reference.*'steps': 20"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "16",
                  "--amplitudes", "1", "--seeds", "0", "--steps", "20", "--period", "10",
                  "--reference", str(ref), "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    assert res["reference_comparison"] == [] and "'period': 10" in res["reference_note"]


def test_width_sweep_mse_losses(tmp_path, capsys):
    cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "8",
              "--amplitudes", "1,70", "--seeds", "0", "--steps", "40", "--period", "20",
              "--loss", "dmse-componentwise", "--validation-seed", "none", "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    assert res["config"]["loss"] == "dmse-componentwise" and res["config"]["validation"] is None
    assert all(r["val_acc"] is None for r in res["rows"])
    assert res["summary"][0]["val"] is None
    assert "DMSE (per component) A=70" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Invalid value for argument `amplitude`"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--loss", "mse",
                  "--amplitudes", "1,70"])
    with pytest.raises(ValueError, match="Invalid value for argument `validation_seed`"):
        cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--validation-seed", "0"])


def test_fig4_dmse_records_the_mse_and_validation(tmp_path, capsys):
    cli.main(["fig4", "--quick", "--out", str(tmp_path), "--steps", "40", "--period", "20",
              "--probe-every", "0", "--width", "8", "--loss", "dmse",
              "--validation-seed", "0", "--no-progress"])
    res = _outputs(tmp_path, "fig4")
    assert res["config"]["loss"] == "dmse"
    # Γ(0) = 1: F(0) is the MSE (1/3) Σ_i (y_i - f_i)² of near-zero outputs, about 1/3
    # (cross-entropy would be about log 3).
    assert abs(res["series"]["loss"][0] - 1 / 3) < 0.1
    # validation on the training spiral itself (seed 0) is the training accuracy
    assert res["val_acc"] == res["final_acc"]
    assert "validation accuracy" in capsys.readouterr().out


def test_overparam_quick(tmp_path, capsys):
    cli.main(["overparam", "--quick", "--out", str(tmp_path), "--no-progress"])
    res = _outputs(tmp_path, "overparam")
    amps = {r["amplitude"] for r in res["rows"]}
    assert amps == {1.0, 10.0}
    for r in res["rows"]:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    # A=1 is cross-entropy, run once per seed and independent of the period.
    assert [r["period"] for r in res["rows"] if r["amplitude"] == 1] == [None]
    assert res["config"]["parameters"] == 784 * 32 + 32 + 32 * 10 + 10
    (cmp,) = res["comparison"]
    assert cmp["n_x"] == 1 and cmp["n_y"] == 1 and cmp["amplitude"] == 10.0
    assert "| A | period (epochs) | n |" in capsys.readouterr().out


def test_overparam_resume_reuses_runs(tmp_path):
    args = ["overparam", "--quick", "--out", str(tmp_path), "--no-progress", "--seeds", "0"]
    cli.main(args)
    first = _outputs(tmp_path, "overparam")
    cli.main(args[:-1] + ["0,1", "--resume"])
    both = _outputs(tmp_path, "overparam")
    assert both["config"]["reused_runs"] == 2 and both["config"]["seeds"] == [0, 1]
    old = {(r["amplitude"], r["seed"]): r for r in first["rows"]}
    for r in both["rows"]:
        if r["seed"] == 0:  # reused as stored (a retrained run would differ in `seconds`)
            assert r == dict(old[(r["amplitude"], 0)], git_commit=first["config"]["git_commit"])
    assert [s["n"] for s in both["summary"]] == [2, 2]
    with pytest.raises(ValueError, match="Invalid value for argument `previous`.*width"):
        cli.main(args + ["--resume", "--width", "8"])


def test_overparam_comparison_by_hand():
    from keras_dynloss.experiments import overparam

    rows = [dict(amplitude=1.0, period=None, seed=s, test_acc=v, train_acc=1.0)
            for s, v in enumerate([0.80, 0.81, 0.82])]
    rows += [dict(amplitude=10.0, period=p, seed=s, test_acc=v + (p == 2) * 0.005,
                  train_acc=0.99) for p in (1, 2) for s, v in enumerate([0.805, 0.84, 0.85])]
    c1, c2 = overparam.compare(rows, (1, 2))
    # period 1: 0.805 beats 0.80 only; 0.84, 0.85 beat all three: U = 7 of 9;
    # exact null counts of U = 7, 8, 9 (n = 3, 3) are 2, 1, 1 of 20: p = 2 * 4/20
    assert (c1["u"], c1["pvalue"]) == (7.0, pytest.approx(0.4))
    # period 2: 0.81 beats 0.80 and ties 0.81 -> U = 7.5; one tied pair:
    # σ² = 9/12 (7 - 6/30) = 5.1, z = (3 - ½)/√5.1, p = erfc(z/√2) ≈ 0.268
    p2 = math.erfc(2.5 / math.sqrt(5.1) / math.sqrt(2))
    assert c2["u"] == 7.5 and c2["method"] == "asymptotic"
    assert c2["pvalue"] == pytest.approx(p2, rel=1e-10)
    # Holm: 2 p2 ≈ 0.537 first, then max(0.537, 0.4)
    assert c1["pvalue_holm"] == pytest.approx(2 * p2) == c2["pvalue_holm"]
    assert not c1["significant"]
    summary = overparam.summarize(rows, (1, 2))
    assert [s["n"] for s in summary] == [3, 3, 3, 3]
    assert summary[2]["test"]["median"] == pytest.approx(0.84)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIRS[0]),
                    reason="needs Debian's dataset-fashion-mnist")
def test_overparam_myrtle_offline(tmp_path):
    cli.main(["overparam", "--quick", "--model", "myrtle", "--data", "offline", "--width", "4",
              "--train-size", "100", "--test-size", "50", "--batch-size", "25",
              "--momentum", "0.9", "--out", str(tmp_path), "--no-progress"])
    res = _outputs(tmp_path, "overparam")
    cfg = res["config"]
    assert cfg["model"] == "Myrtle CNN, width 4" and cfg["momentum"] == 0.9
    assert cfg["data"].startswith("offline") and cfg["preprocessing"].startswith("(x - ")
    # 3x3 convolutions 1->4, 4->4 (x3) with biases, then Dense(10)
    assert cfg["parameters"] == (9 * 4 + 4) + 3 * (9 * 16 + 4) + (4 * 10 + 10)
    with pytest.raises(SystemExit):
        cli.main(["overparam", "--momentum", "1.5"])


def test_overparam_any_tfds_set_with_myrtle_cnn(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=300):
        cli.main(["overparam", "--quick", "--data", "tfds:cifar10", "--width", "8",
                  "--train-size", "100", "--test-size", "20", "--out", str(tmp_path),
                  "--no-progress"])
    res = _outputs(tmp_path, "overparam")
    assert res["config"]["data"] == "tfds cifar10"
    assert res["config"]["model"] == "Myrtle CNN, width 8"
    assert res["config"]["train_size"] == 100 and res["config"]["test_size"] == 20
    assert all(0 <= r["test_acc"] <= 1 for r in res["rows"])
    with pytest.raises(SystemExit):
        cli.main(["overparam", "--data", "cifar10"])


def test_bad_flags_exit():
    with pytest.raises(SystemExit):
        cli.main(["fig4", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.main(["nope"])


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "keras_dynloss", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("fig4", "width-sweep", "overparam"):
        assert command in out.stdout
