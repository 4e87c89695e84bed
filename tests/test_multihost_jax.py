"""Keras's own multi-host `fit`: `keras.distribution.DataParallel` on two JAX processes
(loopback, CPU collectives over gloo), and on two devices of one process, gives the
one-device weights, Γ and curvature probe values."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("jax")

WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras, numpy as np
    process, processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if os.environ.get("LOCAL_DEVICES"):  # one process, its devices
        assert len(jax.devices()) == int(os.environ["LOCAL_DEVICES"])
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices()))
    if processes > 1:
        keras.distribution.initialize(job_addresses=f"127.0.0.1:{port}",
                                      num_processes=processes, process_id=process)
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False))
    import keras_dynloss as kd
    x = np.random.RandomState(0).normal(size=(60, 2)).astype("float32")
    y = (np.arange(60) % 3).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=kd.DynamicalLoss(3, amplitude=30, period=4, from_logits=True))
    steps, half = 12, 60 // processes
    rows = np.concatenate([np.arange(s * 60 + process * half, s * 60 + (process + 1) * half)
                           for s in range(steps)])  # this process's half of each global batch
    xs, ys = np.concatenate([x] * steps)[rows], np.concatenate([y] * steps)[rows]
    probe = kd.CurvatureProbe((x, y), every_n_steps=3, ntk=True)
    history = model.fit(xs, ys, batch_size=half, epochs=2, shuffle=False, verbose=0,
                        steps_per_epoch=steps // 2, callbacks=[kd.DynamicalLossScheduler(), probe])
    if process == 0:
        with open(out, "w") as f:
            json.dump({"weights": [w.tolist() for w in model.get_weights()],
                       "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                       "gamma": history.history["gamma_0_max"],
                       "probe": {k: [float(v) for v in values]
                                 for k, values in probe.history.items()}}, f)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_jax_processes_and_two_devices_give_the_one_device_weights_and_probes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())

    def run(processes, port, **extra_env):
        outs = [tmp_path / f"{processes}-{i}-{len(extra_env)}.json" for i in range(processes)]
        procs = [subprocess.Popen([sys.executable, str(script), str(i), str(processes), str(port),
                                   str(out)], env=dict(env, **extra_env), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i, out in enumerate(outs)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        return json.loads(outs[0].read_text())

    one = run(1, 0)
    two_processes = run(2, _free_port())
    two_devices = run(1, 0, LOCAL_DEVICES="2",
                      XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert max(one["gamma"]) > 2 and one["probe"]["step"] == [0, 3, 6, 9, 12]
    for two in (two_processes, two_devices):
        assert two["iterations"] == one["iterations"] == 12
        assert two["gamma"] == pytest.approx(one["gamma"], rel=1e-6)
        for a, b in zip(one["weights"], two["weights"]):
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
        assert two["probe"]["step"] == one["probe"]["step"]
        for key in ("hessian_max_eig", "ntk_max_eig"):  # Lanczos to its tolerance, 1e-3
            np.testing.assert_allclose(two["probe"][key], one["probe"][key], rtol=1e-4)
