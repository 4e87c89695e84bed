"""Products under a `MirroredStrategy` over two logical CPUs equal the one-device ones
(dense Hessian, Gauss-Newton and NTK references). Runs in a subprocess: logical devices
must be configured before TensorFlow starts."""

import os
import subprocess
import sys

SCRIPT = r'''
import os, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras_dynloss.curvature import distributed
from keras_dynloss.curvature.operators import HessianOperator, NTKOperator, ntk_gram

rng = np.random.default_rng(0)
x = rng.standard_normal((15, 3))  # an odd batch: shards of 8 and 7
y = rng.integers(0, 3, 15)
sw = rng.uniform(0.5, 2.0, 15)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


def build():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((3,), dtype="float64"),
        keras.layers.Dense(6, activation="tanh", dtype="float64"),
        keras.layers.Dense(3, kernel_regularizer=keras.regularizers.L2(0.05), dtype="float64")])


def dense_hessian(model):
    theta = tf.concat([tf.reshape(v, [-1]) for v in model.trainable_variables], 0)
    sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            values = [tf.reshape(p, v.shape)
                      for p, v in zip(tf.split(theta, sizes), model.trainable_variables)]
            out, _, losses = model.stateless_call(values, [], x, return_losses=True)
            value = LOSS(y, out, sample_weight=sw) + tf.add_n(losses)
        grad = inner.gradient(value, theta)
    return outer.jacobian(grad, theta).numpy()


strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build()
one = build()
assert len(distributed.replica_devices(two)) == 2 and distributed.replica_devices(one) is None
reference = dense_hessian(one)
for operator in ("hessian", "gauss_newton"):
    sharded = HessianOperator(two, LOSS, (x, y, sw), operator=operator).dense()
    single = HessianOperator(one, LOSS, (x, y, sw), operator=operator).dense()
    np.testing.assert_allclose(sharded, single, rtol=1e-10, atol=1e-12)
    if operator == "hessian":
        np.testing.assert_allclose(sharded, reference, rtol=1e-10, atol=1e-12)
grad_two = HessianOperator(two, LOSS, (x, y, sw)).gradient()
grad_one = HessianOperator(one, LOSS, (x, y, sw)).gradient()
np.testing.assert_allclose(grad_two[0], grad_one[0], rtol=1e-10, atol=1e-12)
for trace in (True, False):
    np.testing.assert_allclose(NTKOperator(two, x, trace_outputs=trace).dense(),
                               ntk_gram(one, x, trace_outputs=trace), rtol=1e-10, atol=1e-10)
print("OK")
'''


def test_mirrored_products_equal_one_device_references():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("OK"), run.stderr[-3000:]
