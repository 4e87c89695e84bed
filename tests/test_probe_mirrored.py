"""`CurvatureProbe` under a `MirroredStrategy` over two logical CPUs: every value equals the
one-device one and the dense Hessian and NTK, during `fit` too. Runs in a subprocess:
logical devices must be configured before TensorFlow starts."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r'''
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras_dynloss.curvature import CurvatureProbe

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
rng = np.random.default_rng(0)
x, y = rng.standard_normal((15, 3)), rng.integers(0, 3, 15)  # odd: shards of 8 and 7
sw = rng.uniform(0.5, 2.0, 15)


def build(dtype="float64"):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((3,), dtype=dtype),
        keras.layers.Dense(6, activation="tanh", dtype=dtype, name="hidden"),
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.05), dtype=dtype,
                           name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS if dtype == "float64" else
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def dense(model):
    """The Hessian of the weighted loss plus the L2 term, and the traced NTK sum_c J_c J_c^T."""
    theta = tf.concat([tf.reshape(v, [-1]) for v in model.trainable_variables], 0)
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]

    def values(t):
        return [tf.reshape(p, v.shape)
                for p, v in zip(tf.split(t, sizes), model.trainable_variables)]
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            out, _, losses = model.stateless_call(values(theta), [], x, return_losses=True)
            value = LOSS(y, out, sample_weight=sw) + tf.add_n(losses)
        grad = inner.gradient(value, theta)
    hessian = outer.jacobian(grad, theta).numpy()
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = model.stateless_call(values(theta), [], x)[0]
    jac = tape.jacobian(out, theta).numpy()
    return hessian, np.einsum("ikp,jkp->ij", jac, jac)


def probe(model):
    probe = CurvatureProbe((x, y, sw), lanczos_order=40, tol=1e-10, trace=True, trace_samples=4,
                           per_layer=True, eos_ratio=False, ntk=True, ntk_order=15)
    return probe.probe(model, step=0)


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build()
one = build()
one.set_weights(two.get_weights())
hessian, ntk = dense(one)
with strategy.scope():  # Keras's fit under the strategy: float32 (its loss scaling)
    fitted = build("float32")
during_fit = CurvatureProbe((x.astype("float32"), y), every_n_steps=2, lanczos_order=10,
                            ntk=True, ntk_order=4)
fitted.fit(x.astype("float32"), y, epochs=1, batch_size=4, verbose=0, callbacks=[during_fit])
try:  # sub-batches would split the replicas' shards again
    CurvatureProbe((x[:8], y[:8]), micro_batch_size=4).probe(two, step=0)
    refused = ""
except ValueError as error:
    refused = str(error)
blocks = {"hidden": slice(0, 24), "head": slice(24, 45)}
print(json.dumps({
    "two": probe(two), "one": probe(one), "refused": refused,
    "exact": float(np.linalg.eigvalsh(hessian)[-1]), "trace": float(np.trace(hessian)),
    "blocks": {k: float(np.linalg.eigvalsh(hessian[b, b])[-1]) for k, b in blocks.items()},
    "ntk": float(np.linalg.eigvalsh(ntk)[-1]), "fit_steps": during_fit.history["step"]}))
'''


def test_mirrored_probe_equals_one_device_and_the_dense_references(tmp_path):
    script = tmp_path / "mirrored_probe.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", PYTHONPATH=root)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=400, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = result["one"], result["two"]
    assert set(one) == set(two)
    for key in ("hessian_max_eig", "hessian_max_eig/hidden", "hessian_max_eig/head",
                "hessian_trace", "ntk_max_eig"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-8, err_msg=key)
    np.testing.assert_allclose(one["hessian_max_eig"], result["exact"], rtol=1e-8)
    for name, exact in result["blocks"].items():
        np.testing.assert_allclose(two[f"hessian_max_eig/{name}"], exact, rtol=1e-8)
    np.testing.assert_allclose(two["ntk_max_eig"], result["ntk"], rtol=1e-8)
    assert abs(two["hessian_trace"] - result["trace"]) <= 4 * two["hessian_trace_stderr"]
    assert result["fit_steps"] == [0, 2, 4]
    assert "micro_batch_size" in result["refused"] and "MirroredStrategy" in result["refused"]
