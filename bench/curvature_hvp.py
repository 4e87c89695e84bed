"""HVP time / gradient time on the same batch (medians, measured side by side).

Run: PYTHONPATH=. python bench/curvature_hvp.py
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

from curvature_common import digits, digits_cnn, spiral, spiral_mlp, time_interleaved
from keras_dynloss.curvature import operators


def bench(name, model, x, y, repeats):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    flat = operators.FlatParameters(model)
    x, y = tf.constant(x), tf.constant(y)
    v = tf.constant(np.random.default_rng(0).standard_normal(flat.size).astype(np.float32))

    @tf.function
    def keras_grad():  # the usual gradient of a training step (no optimizer update)
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        return tape.gradient(value, model.trainable_variables)

    grad = operators.grad_fn(flat, loss)
    flat_grad = tf.function(lambda: grad(flat.read(), x, y, None)[0])
    fns = {"grad (keras tape)": lambda: [g.numpy() for g in keras_grad()],
           "grad (flat, stateless)": lambda: flat_grad().numpy()}
    for mode in operators.HVP_MODES:
        h = operators.hvp_fn(flat, loss, mode=mode)
        f = tf.function(lambda h=h: h(flat.read(), v, x, y, None)[0])
        fns[f"hvp {mode}"] = lambda f=f: f().numpy()
    times = time_interleaved(fns, repeats=repeats)
    base = times["grad (keras tape)"]
    print(f"\n{name}: n={flat.size} params, batch={int(x.shape[0])}")
    for k, t in times.items():
        print(f"  {k:28s} {t * 1e6:9.1f} us   ratio vs keras grad {t / base:5.2f}")
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, CPU threads: {tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")
    x, y = spiral()
    bench("spiral MLP 2-100-3 (ReLU)", spiral_mlp(), x, y, args.repeats)
    keras.utils.set_random_seed(0)
    deep = keras.Sequential([keras.Input((2,))] + [keras.layers.Dense(100, activation="tanh") for _ in range(3)] + [keras.layers.BatchNormalization(), keras.layers.Dense(3)])
    bench("spiral deep MLP 2-100x3-BN-3 (tanh)", deep, x, y, args.repeats)
    x, y = digits(512)
    bench("digits CNN (8x8, conv16-pool-conv32-dense10)", digits_cnn(), x, y, args.repeats)


if __name__ == "__main__":
    main()
