"""The command line: every subcommand end to end with tiny settings."""

import json
import subprocess
import sys

import numpy as np
import pytest

from keras_dynloss import cli

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
              "--amplitudes", "1,70", "--seeds", "0", "--steps", "60", "--period", "20",
              "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    rows = res["rows"]
    assert {(r["width"], r["amplitude"], r["seed"]) for r in rows} == {
        (4, 1.0, 0), (4, 70.0, 0), (8, 1.0, 0), (8, 70.0, 0)}
    assert all(0 <= r["final_acc"] <= 1 for r in rows)
    assert len(res["summary"]) == 4 and res["summary"][0]["n"] == 1
    assert "| width |" in capsys.readouterr().out
    assert (tmp_path / "width-sweep.md").exists()


def test_width_sweep_reference_comparison(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"runs": [
        {"width": 4, "A": 1.0, "seed": 0, "final_acc": 0.5},
        {"width": 4, "A": 1.0, "seed": 1, "final_acc": 0.7},
        {"width": 99, "A": 1.0, "seed": 0, "final_acc": 0.9}]}))
    cli.main(["width-sweep", "--quick", "--out", str(tmp_path), "--widths", "4",
              "--amplitudes", "1", "--seeds", "0", "--steps", "20", "--period", "10",
              "--reference", str(ref), "--no-progress"])
    res = _outputs(tmp_path, "width-sweep")
    (cmp,) = res["reference_comparison"]
    assert cmp["width"] == 4 and cmp["ref_mean"] == pytest.approx(0.6)
    assert cmp["diff"] == pytest.approx(res["rows"][0]["final_acc"] - 0.6)


def test_overparam_quick(tmp_path, capsys):
    cli.main(["overparam", "--quick", "--out", str(tmp_path), "--no-progress"])
    res = _outputs(tmp_path, "overparam")
    amps = {r["amplitude"] for r in res["rows"]}
    assert amps == {1.0, 10.0}
    for r in res["rows"]:
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1
    # A=1 is cross-entropy, run once per seed and independent of the period.
    assert [r["period"] for r in res["rows"] if r["amplitude"] == 1] == [None]
    assert "A \\ period" in capsys.readouterr().out


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
