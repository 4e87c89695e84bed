"""Why a probe of a CNN is not XLA-compiled on CPU: convolutions in XLA loops.

XLA's CPU backend runs a convolution inside a loop body far slower than the
same convolution outside one (jax-ml/jax#12868, open upstream). A probe's
Lanczos is such a loop, so `CurvatureProbe(jit_compile=True)`, or an
`InStepProbe` in a jit-compiled training step, warns on a CPU-only machine
when the model has convolutions.

Measured on the ResNet-style CNN of `curvature_scale.py` (probe batch 256),
medians of 3 calls after a warm-up call, graph mode and XLA side by side:
* one Hessian product (`products.curvature_fn`) alone;
* 3 Hessian products in a `tf.while_loop`;
* the spiral MLP (no convolution): 3 products in a loop, for contrast.

Run: PYTHONPATH=.:bench python bench/xla_cpu_conv_loop.py
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from curvature_common import fashion, resnet_cnn  # noqa: E402
from keras_dynloss.curvature.flat import FlatParameters  # noqa: E402
from keras_dynloss.curvature.products import curvature_fn  # noqa: E402
from keras_dynloss.datasets import spiral  # noqa: E402
from keras_dynloss.experiments._spiral import build_mlp  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def timings(model, x, y, loop):
    flat = FlatParameters(model)
    record = curvature_fn(flat, LOSS)
    x, y, v = tf.constant(x), tf.constant(y), tf.ones([flat.size], flat.dtype)

    def products():
        hvp = record(flat.read(), flat.non_trainable(), x, y, None)
        if not loop:
            return hvp(v)
        return tf.while_loop(lambda i, w: i < 3, lambda i, w: (i + 1, hvp(w) / 1e3), (0, v))[1]

    out = {}
    for jit in (False, True):
        fn = tf.function(products, jit_compile=jit)
        fn().numpy()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn().numpy()
            times.append(time.perf_counter() - t0)
        out[jit] = float(np.median(times))
    return out


def main():
    x, y = fashion(256)
    cnn = resnet_cnn()
    xs, ys = spiral()
    mlp = build_mlp(100)
    print("Hessian products, graph mode vs XLA on this CPU (median of 3 calls after a warm-up)")
    for name, model, xb, yb, loop in (("CNN, one product alone", cnn, x, y, False),
                                      ("CNN, 3 products in a tf.while_loop", cnn, x, y, True),
                                      ("spiral MLP, 3 products in a tf.while_loop", mlp, xs, ys, True)):
        t = timings(model, xb, yb, loop)
        print(f"  {name:42s} graph {t[False] * 1e3:9.1f} ms   XLA {t[True] * 1e3:9.1f} ms   "
              f"XLA / graph {t[True] / t[False]:6.2f}")


if __name__ == "__main__":
    main()
