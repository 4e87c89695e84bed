"""Curvature probes at scale: a small ResNet-style CNN and a >= 1M-parameter MLP.

CNN (the setup of issue 8): 28x28x1 inputs (Fashion-MNIST when
`keras_dynloss.datasets.fashion_mnist` finds it, else random images), stem
conv 20 + BatchNorm, two residual blocks (20 channels at 28x28; 40 channels at
14x14, strided, 1x1 projection), global average pooling, Dense(10): 30.7k
parameters (the issue's network had 28.5k). Probe batch 256; training batch
256, `SGD(0.05, momentum=0.9)`.

Measured, on the same batch and machine:
* training step: median seconds of `model.train_on_batch`;
* `CurvatureProbe(lanczos_order=10, ntk=True, ntk_order=10)` (defaults
  otherwise: warm start, tol 1e-3): the first probe (build + trace + run) and
  the median steady probe, each steady probe after 25 training steps, both
  for the Hessian alone and for Hessian + traced NTK; the steady probe in
  training steps (goal: first <= 20 s, steady Hessian + NTK <= 40 steps);
* peak memory of the first and the steady probes (TensorFlow's CPU allocator,
  `curvature_common.AllocatorPeak`: every tensor, no sampling) beside the
  Lanczos state `(order + 4) n 8` bytes, one loss gradient (one backward
  pass) and one product computed alone (`hvp_fn`: forward, gradient and the
  second backward pass; one traced NTK product) on the same batch;
* with the default `micro_batch_size="auto"` (the forward pass on this batch
  holds more than 32 MiB, so products run over 4 sub-batches of 64) and, for
  comparison, `micro_batch_size=None` (whole batch; the Hessian also with
  `hvp_mode="forward_over_reverse"`);
* the full (untraced) NTK, one VJP and its transpose per product.

MLP: 784-1024-1024-10 (1.86M parameters), the same measurements for the
Hessian probe, and `ntk_eigenvalues` on 256 inputs, which above
`DENSE_NTK_MAX_BYTES` (256 MiB of Jacobian) runs matrix-free by default.

Run: PYTHONPATH=. python bench/curvature_scale.py
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from curvature_common import AllocatorPeak, allocator_peak  # noqa: E402
from keras_dynloss.curvature import CurvatureProbe, ntk_eigenvalues  # noqa: E402
from keras_dynloss.curvature import flat as flat_lib  # noqa: E402
from keras_dynloss.curvature import hessian, ntk  # noqa: E402
from keras_dynloss.curvature.ntk_api import DENSE_NTK_MAX_BYTES  # noqa: E402


def resnet_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def conv_bn(h, filters, strides=1, relu=True):
        h = layers.Conv2D(filters, 3, strides=strides, padding="same")(h)
        h = layers.BatchNormalization()(h)
        return layers.ReLU()(h) if relu else h

    inputs = keras.Input((28, 28, 1))
    h = conv_bn(inputs, 20)  # 28x28
    r = conv_bn(conv_bn(h, 20), 20, relu=False)
    h = layers.ReLU()(layers.Add()([h, r]))
    r = conv_bn(conv_bn(h, 40, strides=2), 40, relu=False)  # 14x14
    skip = layers.Conv2D(40, 1, strides=2)(h)
    h = layers.ReLU()(layers.Add()([skip, r]))
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(10)(h))


def big_mlp(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(1024, activation="relu"),
                             keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(10)])


def data(n=4096):
    try:
        from keras_dynloss.datasets import fashion_mnist

        x, y = fashion_mnist("train", num_samples=n)
        return x.reshape(-1, 28, 28, 1).astype("float32"), y
    except Exception:  # no Fashion-MNIST here: random images
        rng = np.random.default_rng(0)
        return rng.uniform(size=(n, 28, 28, 1)).astype("float32"), rng.integers(0, 10, n)


def alone_peaks(model, loss, xb, yb, with_ntk):
    """Allocator peaks of one gradient, one Hessian product and (with_ntk) one
    traced NTK product, each computed alone in its own `tf.function`."""
    flat = flat_lib.FlatParameters(model)
    xb, yb = tf.constant(xb), tf.constant(yb)
    v = tf.ones([flat.size], flat.dtype)
    grad = hessian.grad_fn(flat, loss)
    hvp = hessian.hvp_fn(flat, loss)
    peaks = {"gradient": allocator_peak(tf.function(lambda: grad(flat.read(), xb, yb, None)[0])),
             "hvp": allocator_peak(tf.function(lambda: hvp(flat.read(), v, xb, yb, None)[0]))}
    if with_ntk:
        k = int(model.outputs[0].shape[-1])
        product = ntk.ntk_matvec_fn(flat, num_outputs=k)
        u = tf.ones([int(xb.shape[0])], flat.dtype)
        peaks["ntk"] = allocator_peak(tf.function(lambda: product(flat.read(), u, xb)))
    return peaks


def measure(model, x, y, probe_kwargs, steps_between=25, probes=4):
    n = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xb, yb = x[:256], y[:256]
    model.train_on_batch(xb, yb)
    step_times = []
    for _ in range(10):
        t0 = time.perf_counter()
        model.train_on_batch(xb, yb)
        step_times.append(time.perf_counter() - t0)
    peaks = alone_peaks(model, model.loss, xb, yb, probe_kwargs.get("ntk", False))
    probe = CurvatureProbe((xb, yb), **probe_kwargs)
    with AllocatorPeak() as mem:
        t0 = time.perf_counter()
        probe.probe(model)
        first = time.perf_counter() - t0
    micro = probe.build_for(model).micro_batch_size  # the graph the first probe built
    steady, growth = [], []
    for i in range(probes):
        for j in range(steps_between):
            s = (i * steps_between + j) * 256 % (len(x) - 256)
            t0 = time.perf_counter()
            model.train_on_batch(x[s:s + 256], y[s:s + 256])
            step_times.append(time.perf_counter() - t0)
        with AllocatorPeak() as steady_mem:
            t0 = time.perf_counter()
            probe.probe(model)
            steady.append(time.perf_counter() - t0)
        growth.append(steady_mem.growth)
    step = float(np.median(step_times))
    return dict(n=n, micro=micro, step=step, first=first, steady=float(np.median(steady)), history=probe.history,
                first_peak=mem.growth, steady_peak=max(growth), peaks=peaks,
                state=(probe_kwargs.get("lanczos_order", 20) + 4) * n * 8)


def lanczos_memory(n=2_000_000, order=10):
    """Allocator peak of the Lanczos loop alone (top Ritz pair, tol 1e-3) on a
    diagonal operator of size n, graph mode and XLA, in n-vectors of float64."""
    from keras_dynloss.curvature import krylov

    d = tf.random.stateless_uniform([n], seed=[0, 1], dtype=tf.float64)
    start = tf.random.stateless_normal([n], seed=[0, 2], dtype=tf.float64)
    for jit in (False, True):
        fn = tf.function(lambda: krylov.ritz(krylov.lanczos_loop(lambda v: d * v, start, order, tol=1e-3), 1)[2],
                         jit_compile=jit)
        peak = allocator_peak(fn)
        print(f"  Lanczos loop alone, n={n}, order {order}, {'XLA' if jit else 'graph'}: peak "
              f"{peak / 2**20:.0f} MiB = {peak / (8 * n):.1f} n-vectors (state bound order+4 = {order + 4})")


def report(name, r, ntk):
    h = r["history"]
    print(f"  {name} [sub-batches of {r['micro'] or 'all'} rows]: first probe {r['first']:.1f} s; "
          f"steady probe {r['steady']:.2f} s = "
          f"{r['steady'] / r['step']:.1f} training steps ({r['step'] * 1e3:.0f} ms/step); "
          f"HVPs/probe {h['hessian_matvecs']}" + (f", NTK products/probe {h['ntk_matvecs']}" if ntk else ""))
    print(f"     lambda_max {h['hessian_max_eig'][-1]:.4g} (residual {h['hessian_max_eig_residual'][-1]:.1e})"
          + (f", NTK lambda_max {h['ntk_max_eig'][-1]:.4g} (residual {h['ntk_max_eig_residual'][-1]:.1e})"
             if ntk else "")
          )
    p, mib = r["peaks"], 2**-20
    print(f"     peak memory (allocator): first probe {r['first_peak'] * mib:.0f} MiB, steady probe "
          f"{r['steady_peak'] * mib:.0f} MiB = {r['steady_peak'] / p['gradient']:.2f} x one gradient "
          f"({p['gradient'] * mib:.0f} MiB); alone: one Hessian product {p['hvp'] * mib:.0f} MiB"
          + (f", one traced NTK product {p['ntk'] * mib:.0f} MiB" if "ntk" in p else "")
          + f"; Lanczos state (order+4)*n*8 = {r['state'] * mib:.1f} MiB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--skip-mlp", action="store_true")
    args = parser.parse_args()
    x, y = data()
    lanczos_memory()
    print(f"ResNet-style CNN, probe batch 256 of 28x28x1, n={resnet_cnn().count_params()} parameters "
          f"({sum(int(np.prod(v.shape)) for v in resnet_cnn().trainable_variables)} trainable)")
    kwargs = dict(lanczos_order=10, eos_ratio=False)
    report("Hessian (order <= 10)", measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=False)
    kwargs = dict(lanczos_order=10, eos_ratio=False, micro_batch_size=None)
    report("Hessian, micro_batch_size=None (whole batch, first pass recorded once per probe)",
           measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=False)
    kwargs = dict(lanczos_order=10, eos_ratio=False, micro_batch_size=None, hvp_mode="forward_over_reverse")
    report("Hessian, micro_batch_size=None, hvp_mode='forward_over_reverse'",
           measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=False)
    kwargs = dict(lanczos_order=10, ntk=True, ntk_order=10, eos_ratio=False)
    report("Hessian + traced NTK (orders <= 10)", measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=True)
    kwargs = dict(lanczos_order=10, ntk=True, ntk_order=10, eos_ratio=False, micro_batch_size=None)
    report("Hessian + traced NTK, micro_batch_size=None",
           measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=True)
    kwargs = dict(lanczos_order=10, ntk=True, ntk_order=10, ntk_trace_outputs=False, eos_ratio=False)
    report("Hessian + full NTK (N*K x N*K; one VJP + its transpose per product)",
           measure(resnet_cnn(), x, y, kwargs, probes=args.probes), ntk=True)
    if args.skip_mlp:
        return
    xm = x.reshape(len(x), -1)
    model = big_mlp()
    print(f"MLP 784-1024-1024-10, n={model.count_params()} parameters, probe batch 256")
    report("Hessian (order <= 10)", measure(model, xm, y, dict(lanczos_order=10, eos_ratio=False),
                                             probes=args.probes), ntk=False)
    jac_bytes = 256 * 10 * model.count_params() * 8
    t0 = time.perf_counter()
    res = ntk_eigenvalues(model, xm[:256], order=10)
    print(f"  ntk_eigenvalues(256 inputs): Jacobian would be {jac_bytes / 2**30:.1f} GiB > "
          f"{DENSE_NTK_MAX_BYTES / 2**20:.0f} MiB, so method={res.method!r}: lambda_max "
          f"{res.eigenvalues[0]:.4g} (residual {res.residuals[0]:.1e}) in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
