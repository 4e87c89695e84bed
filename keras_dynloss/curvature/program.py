"""What one probe computes: `Program.fn`, a pure function compiled once (`CurvatureProbe`) or
traced into a training step (`InStepProbe`),

    fn(theta, non_trainable, x, y, sample_weight, starts, seed, step, moments)
        -> (results, next_starts),

with warm starts `{target: (size,)}` (zero: cold), a seed int32 (2,), the optimizer step
and Adam's second moments. Every Lanczos run and Hutchinson sample shares one recording.
`results` maps each target (`"main"`, `"layer/<name>"`, `"preconditioned"`, `"ntk"`) to
`{"values": (k,), "residuals": (k,), "matvecs": (), "breakdowns": ()}`, `"trace"` to samples.
"""

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, _compat, backend
from keras_dynloss.curvature import eos, products
from keras_dynloss.curvature.data import num_rows
from keras_dynloss.curvature.flat import FlatParameters
from keras_dynloss.curvature.lanczos import krylov_dtype, lanczos_loop, ritz
from keras_dynloss.curvature.operators import replicas
from keras_dynloss.curvature.trace import hutchinson_loop

_CONVOLUTIONS = tuple(getattr(keras.layers, name) for name in (
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D"))


def xla_cpu_warning(model, jit_compile, what=None):
    """The warning when XLA compiles a convolutional model's probe on a CPU, else None."""
    name = backend.name()
    if name == "torch" or not (jit_compile or name == "jax") or not any(
            isinstance(layer, _CONVOLUTIONS) for layer in _compat.iter_layers(model)):
        return None
    if name == "jax":
        import jax
        accelerated = jax.default_backend() != "cpu"
    else:
        import tensorflow as tf
        accelerated = any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))
    if accelerated:
        return None
    return (f"CurvatureProbe: {what or ('JAX' if name == 'jax' else 'jit_compile')} compiles a "
            "convolutional model's probe with XLA on a CPU, which runs convolutions inside "
            "loops (Lanczos) tens of times slower (jax-ml/jax#12868); on CPU, prefer TensorFlow "
            "without XLA, or PyTorch.")


def filled(spec, value):
    """Tensors shaped as `spec` (KerasTensors): floats `value`, integers 0."""
    return keras.tree.map_structure(
        lambda s: ops.full(s.shape, value if "float" in s.dtype else 0, s.dtype), spec)


def _lanczos(matvec, start, seed, k, order, tol, noise):
    """`(result, next start)` of Lanczos from `start + noise * random` (zero `start`: random)."""
    # A breakdown with k = 1 stops the run (the random part puts the top eigenvector in the
    # Krylov space); for k > 1 (multiplicities) it restarts.
    n, kdt = start.shape[0], krylov_dtype()
    order = min(order, n)
    k = min(k, order)
    r = backend.get().uniform((n,), seed, kdt)
    size = ops.sqrt(ops.sum(start * start))
    v0 = ops.where(size > 0, start / ops.where(size > 0, size, 1.0)
                   + noise * r / ops.sqrt(ops.sum(r * r)), r)
    run = lanczos_loop(matvec, v0, order, tol=tol, k=k, restart=k > 1,
                       seed=backend.fold_in(seed, 1))
    values, residuals, vectors = ritz(run, k)
    return ({"values": values, "residuals": residuals, "matvecs": run.steps,
             "breakdowns": run.breakdowns}, ops.sum(vectors, axis=1))


class Program:
    """The probe of a model, loss and optimizer: `fn`, `flat`, `kind` (`eos`), `spec` (shaped
    as the results), `sizes` (of the warm starts), `moments()` (Adam's slots, or [])."""

    def __init__(self, probe, model, loss, optimizer, kind, x):
        self.kind, self.flat = kind, FlatParameters(model, probe.variables)
        flat, micro, kdt = self.flat, probe.micro_batch_size, krylov_dtype()
        layers = ([(f"layer/{layer.name}", FlatParameters(model, [layer]))
                   for layer in model.layers if layer.trainable_variables]
                  if probe.per_layer else [])
        whole, devices = FlatParameters(model) if layers else flat, replicas(model)
        if devices:
            from keras_dynloss.curvature import distributed
        if devices and (micro or probe.jit_compile):
            raise _checks.invalid("micro_batch_size" if micro else "jit_compile", "None / False "
                                  "under a MirroredStrategy (the replicas split the batch)",
                                  micro or probe.jit_compile)
        products.sub_batches(x, micro)  # micro_batch_size divides the batch
        adam = kind == "adam" and optimizer.built
        self.sizes = {"main": flat.size, **{name: b.size for name, b in layers},
                      **({"preconditioned": flat.size} if adam else {})}
        orders = {name: probe.lanczos_order for name in self.sizes}
        if probe.ntk:
            outputs = 1 if probe.ntk_trace_outputs else flat.num_outputs(x)
            orders["ntk"], self.sizes["ntk"] = probe.ntk_order, num_rows(x) * outputs
        ks = {name: min(probe.top_k if name == "main" else 1, order, self.sizes[name])
              for name, order in orders.items()}
        tensor = keras.KerasTensor
        self.spec = {name: {"values": tensor((k,), kdt), "residuals": tensor((k,), kdt),
                            "matvecs": tensor((), "int32"), "breakdowns": tensor((), "int32")}
                     for name, k in ks.items()}
        if probe.trace:
            self.spec["trace"] = keras.KerasTensor((probe.trace_samples,), kdt)
        options = dict(trace_outputs=probe.ntk_trace_outputs, training=probe.training)
        ntk_fn = (distributed.sharded_ntk_fn(flat, devices, **options) if devices
                  else products.ntk_fn(flat, micro_batch_size=micro, **options))
        self.moments = (lambda: [ops.convert_to_tensor(m) for m in _compat.adam_second_moments(
            optimizer, flat.variables)]) if adam else list

        def krylov(matvec, dtype):
            return lambda v: ops.cast(matvec(ops.cast(v, dtype)), kdt)

        def fn(*args):
            if backend.name() != "torch":
                return traced(*args)
            import torch
            with torch.random.fork_rng():  # Keras's unseeded Dropout draws from torch's RNG
                return traced(*args)

        def traced(theta, non_trainable, x, y, sw, starts, seed, step, moments):
            fixed = loss.at_step(step) if hasattr(loss, "at_step") else loss
            curvature = products.curvature_fn(whole, fixed, operator=probe.operator,
                                              training=probe.training, micro_batch_size=micro)
            if devices:
                curvature = distributed.sharded_curvature_fn(curvature, devices)
            product = curvature(theta, non_trainable, x, y, sw)
            matvecs = {name: krylov(lambda v, b=b: b.select(product(b.embed(v))), whole.dtype)
                       for name, b in layers}
            matvecs["main"] = krylov(product if flat is whole else
                                     (lambda v: flat.select(product(flat.embed(v)))), whole.dtype)
            if probe.ntk:
                matvecs["ntk"] = krylov(ntk_fn(theta, non_trainable, x), flat.dtype)
            if adam:
                d = eos.inverse_sqrt_preconditioner(optimizer, moments, step, kdt)
                matvecs["preconditioned"] = lambda v: d * matvecs["main"](d * v)
            out, nexts = {}, {}
            for i, name in enumerate(orders):
                def run(name=name, stream=backend.fold_in(seed, 4 + i)):
                    return _lanczos(matvecs[name], starts[name], stream, ks[name], orders[name],
                                    probe.tol, probe.warm_start_noise)
                out[name], nexts[name] = run() if name != "preconditioned" else ops.cond(
                    step > 0, run, lambda: (filled(self.spec[name], np.nan), starts[name]))
            if probe.trace:
                out["trace"] = hutchinson_loop(matvecs["main"], flat.size, probe.trace_samples,
                                               backend.fold_in(seed, 1))
            return out, nexts

        self.fn = fn

    def zero_starts(self):
        """Cold starts: a zero vector per target."""
        return {name: ops.zeros((size,), krylov_dtype()) for name, size in self.sizes.items()}
