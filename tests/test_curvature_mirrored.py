"""`CurvatureProbe` under `MirroredStrategy` over two logical CPU devices equals the
one-device value (and the dense Hessian and NTK). Runs in a subprocess: logical devices
must be configured before TensorFlow starts."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
sys.path.insert(0, sys.argv[1])
from conftest import explicit_hessian
from keras_dynloss.curvature import CurvatureProbe

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
rng = np.random.default_rng(0)
x = rng.standard_normal((15, 3)).astype("float32")  # odd size: shards of 8 and 7
y = rng.integers(0, 3, 15)
sw = rng.uniform(0.5, 2.0, 15).astype("float32")


def build():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(6, activation="tanh", name="hidden"),
                              keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.01), name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    return model


def probe_values(model, sharded):
    probe = CurvatureProbe((x, y, sw), lanczos_order=40, tol=1e-9, trace=True, trace_samples=4,
                           per_layer=True, eos_ratio=False, ntk=True, ntk_order=15)
    values = probe.probe(model, step=0)
    assert (probe._graph.config["replicas"] is not None) == sharded
    assert (probe._graph.ntk_devices is not None) == sharded
    return values


def dense_ntk_max(model):
    """lambda_max of sum_c J_c J_c^T from the explicit Jacobian (N, K, n)."""
    with tf.GradientTape() as tape:
        out = model(x, training=False)
    jac = tape.jacobian(out, model.trainable_variables)
    j = np.concatenate([tf.reshape(a, [15, 3, -1]).numpy() for a in jac], axis=2).astype(np.float64)
    return float(np.linalg.eigvalsh(np.einsum("ikp,jkp->ij", j, j))[-1])


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build()
one = build()
one.set_weights(two.get_weights())
weighted = lambda yt, yp: LOSS(yt, yp, sample_weight=sw) + sum(one.losses)
exact = float(np.linalg.eigvalsh(explicit_hessian(one, weighted, x, y))[-1])
exact_ntk = dense_ntk_max(one)
# Under fit too: the probe is a callback of a model trained under the strategy.
with strategy.scope():
    fitted = build()
fit_probe = CurvatureProbe((x, y), every_n_steps=2, lanczos_order=10, ntk=True, ntk_order=4)
fitted.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[fit_probe])
try:  # sub-batches would split the replicas' shards again: refused, naming the argument
    CurvatureProbe((x, y), micro_batch_size=4).probe(two, step=0)
    refused = ""
except ValueError as err:
    refused = str(err)
print(json.dumps({"two": probe_values(two, True), "one": probe_values(one, False), "exact": exact,
                  "exact_ntk": exact_ntk, "refused": refused,
                  "replicas": strategy.num_replicas_in_sync, "fit_steps": fit_probe.history["step"]}))
'''


def test_mirrored_probe_equals_one_device(tmp_path):
    script = tmp_path / "mirrored_probe.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    one, two = result["one"], result["two"]
    assert set(one) == set(two)
    for key in one:
        if key.startswith("hessian_max_eig") and "residual" not in key:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-6, err_msg=key)
    # The Hutchinson samples use the same probe vectors: equal too.
    np.testing.assert_allclose(two["hessian_trace"], one["hessian_trace"], rtol=1e-6)
    np.testing.assert_allclose(one["hessian_max_eig"], result["exact"], rtol=1e-5)
    # NTK products sharded over the two devices: the one-device value and the dense J J^T.
    np.testing.assert_allclose(two["ntk_max_eig"], one["ntk_max_eig"], rtol=1e-6)
    np.testing.assert_allclose(two["ntk_max_eig"], result["exact_ntk"], rtol=1e-5)
    assert result["fit_steps"] == [0, 2, 4]
    assert "micro_batch_size" in result["refused"] and "MirroredStrategy" in result["refused"]
