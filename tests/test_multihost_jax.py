"""Keras's own multi-host `fit`: `keras.distribution.DataParallel` on two JAX processes
(loopback, CPU collectives over gloo) gives the one-process weights and Γ."""

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
    history = model.fit(xs, ys, batch_size=half, epochs=2, shuffle=False, verbose=0,
                        steps_per_epoch=steps // 2, callbacks=[kd.DynamicalLossScheduler()])
    if process == 0:
        with open(out, "w") as f:
            json.dump({"weights": [w.tolist() for w in model.get_weights()],
                       "iterations": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                       "gamma": history.history["gamma_0_max"]}, f)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_jax_processes_give_the_one_process_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())

    def run(processes, port):
        outs = [tmp_path / f"{processes}-{i}.json" for i in range(processes)]
        procs = [subprocess.Popen([sys.executable, str(script), str(i), str(processes), str(port),
                                   str(out)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for i, out in enumerate(outs)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        return json.loads(outs[0].read_text())

    one, two = run(1, 0), run(2, _free_port())
    assert one["iterations"] == two["iterations"] == 12
    assert two["gamma"] == pytest.approx(one["gamma"], rel=1e-6) and max(one["gamma"]) > 2
    for a, b in zip(one["weights"], two["weights"]):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
