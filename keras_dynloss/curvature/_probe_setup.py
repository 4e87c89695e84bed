"""How `CurvatureProbe` turns its options and the model into a compiled probe.

`ProbeSetup` is the part of `CurvatureProbe` that does not depend on Keras's
callback hooks: it resolves the loss (a dynamical loss through a copy bound to
the optimizer's step), the optimizer and its edge-of-stability kind, decides
when the traced probe must be rebuilt (a new loss, schedule, period or
optimizer), builds the `ProbeGraph`, and turns a probe's summary into the
logged values.
"""

import warnings

import keras
import tensorflow as tf

from keras_dynloss import _checks as val
from keras_dynloss.curvature import _probe
from keras_dynloss.curvature import _records
from keras_dynloss.curvature import distributed
from keras_dynloss.curvature import eos as eos_lib

EOS_RATIO = "eos_ratio"

_CONVOLUTIONS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose, keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D, keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D,
)


def _has_convolution(layer):
    if isinstance(layer, _CONVOLUTIONS):
        return True
    return any(_has_convolution(sub) for sub in getattr(layer, "layers", []))


def xla_cpu_convolution_warning(model, what):
    """The warning for an XLA-compiled probe of a convolutional model on a
    machine with no GPU or TPU, else `None`.

    XLA's CPU backend runs a convolution inside a loop body far slower than
    the same convolution outside one (jax-ml/jax#12868, open upstream): on
    the CNN of `bench/curvature_scale.py`, 3 Hessian products in a compiled
    `tf.while_loop` take 41.8-48.8 s with XLA against 1.24-1.25 s without
    (`bench/xla_cpu_conv_loop.py`). A probe's Lanczos is such a loop.
    """
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return None
    if not _has_convolution(model):
        return None
    return (f"CurvatureProbe: {what} compiles the probe with XLA on a CPU-only machine, and the model has "
            "convolutions. XLA's CPU backend runs convolutions inside a loop (the probe's Lanczos) tens of times "
            "slower than outside one (jax-ml/jax#12868): on CPU, probe this model without XLA "
            "(CurvatureProbe(jit_compile=False) as a callback, or a training step without jit_compile).")


def _same(a, b):
    """Identity, or equality for plain numbers (a schedule's period, flags)."""
    if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)):
        return a == b
    return a is b


class ProbeSetup:
    """Loss, optimizer and graph resolution for `CurvatureProbe` (a base class;
    the attributes are set by `CurvatureProbe.__init__`)."""

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def optimizer_in_use(self):
        """The optimizer giving the step (`optimizer=` or the model's, unwrapped)."""
        opt = self._optimizer if self._optimizer is not None else getattr(self.model, "optimizer", None)
        return None if opt is None else eos_lib.unwrap(opt)

    def _resolve_loss(self):
        loss = self._loss if self._loss is not None else getattr(self.model, "loss", None)
        if isinstance(loss, str):
            loss = keras.losses.get(loss)
        if not callable(loss):
            raise val.invalid(
                "loss", "a callable loss (pass `loss=` when the model was compiled with several losses or none)",
                loss)
        return loss

    def _probe_loss(self, loss):
        """A dynamical loss is probed through a copy bound to the same step
        (the optimizer's when it is unbound) with no invalid-label counter, so
        probing never writes training state."""
        if not (hasattr(loss, "at_step") and hasattr(loss, "bind")):
            return loss
        source = getattr(loss, "step", None)
        if source is None:
            opt = self.optimizer_in_use()
            source = None if opt is None else opt.iterations
        if source is None:
            raise val.invalid(
                "loss", "a dynamical loss bound to a step (`loss.bind(optimizer)`), or a model/probe with an "
                "optimizer to follow", loss)
        return loss.at_step(0).bind(source)

    def _eos_optimizer(self):
        opt = self.optimizer_in_use()
        if not self.eos_ratio:
            return None, None
        found = None if opt is None else eos_lib.kind(opt)
        if found is None:
            self._warn_once("eos", "CurvatureProbe: `eos_ratio` is defined for keras.optimizers.SGD, Adam and "
                            f"AdamW; not logged for {type(opt).__name__}.")
        elif found == "adam" and not opt.built:  # no slots yet: NaN until it is built
            return "adam-unbuilt", opt
        return found, opt

    def _trace_key(self):
        """Objects the traced probe depends on; a change forces a rebuild."""
        loss = self._resolve_loss()
        schedule = getattr(loss, "schedule", None)
        kind, opt = self._eos_optimizer()
        return loss, (self.model, loss, schedule, getattr(schedule, "period", None), getattr(loss, "step", None),
                      kind, opt, *self.model.trainable_variables)

    def _layers(self):
        if not self.per_layer:
            return []
        layers = self.model.layers if isinstance(self.model, keras.Model) else [self.model]
        return [(layer.name, layer) for layer in layers if layer.trainable_variables]

    def _build(self, loss, x):
        kind, opt = self._eos_optimizer()
        config = dict(
            operator=self.operator, mode=self.hvp_mode, training=self.training, variables=self.variables,
            layers=self._layers(), top_k=self.top_k, order=self.lanczos_order, tol=self.tol,
            noise=self.warm_start_noise, trace_samples=self.trace_samples if self.trace else 0,
            ntk=self.ntk, ntk_order=self.ntk_order, ntk_trace_outputs=self.ntk_trace_outputs,
            eos_optimizer=opt if kind == "adam" else None,
            replicas=distributed.sharded_products(self.model),
        )
        micro = self.micro_batch_size
        if config["replicas"] is not None and micro not in (None, "auto"):
            raise val.invalid("micro_batch_size", "None or 'auto' under a MirroredStrategy (the probe batch is "
                              "already split across the replicas)", micro)
        config["micro_batch_size"] = None if config["replicas"] is not None else micro
        if config["replicas"] is not None and self.jit_compile:
            raise val.invalid("jit_compile", "False under a MirroredStrategy (one XLA cluster cannot span "
                              "several devices)", self.jit_compile)
        config["jit_compile"] = self.jit_compile
        message = self.jit_compile and xla_cpu_convolution_warning(self.model, "jit_compile=True")
        if message:
            self._warn_once("xla-cpu-convolution", message)
        self._graph = _probe.ProbeGraph(self.model, self._probe_loss(loss), config, x)
        self._starts = self._graph.initial_starts()
        self._eos_kind = kind

    def _graph_for(self, x):
        loss, key = self._trace_key()
        if self._graph is None or len(key) != len(self._key) or not all(map(_same, key, self._key)):
            self._build(loss, x)
            self._key = key
        return self._graph

    def _values(self, out):
        values = _records.float_values(
            out, prefix=self.prefix, top_k=self.top_k, layer_names=[layer[0] for layer in self._graph.layers],
            trace=self.trace, ntk=self.ntk, eos=self._eos_kind == "adam")
        if self._eos_kind == "adam-unbuilt":
            values["preconditioned_max_eig"] = values["preconditioned_max_eig_residual"] = float("nan")
        main = out["main"]
        if int(main["breakdowns"]) and self._graph.flat.size > int(main["steps"]):
            self._warn_once("breakdown", "CurvatureProbe: Lanczos breakdown (invariant Krylov subspace); the "
                            "iteration restarted from a random vector.")
        if self._eos_kind is not None:
            curvature = values["preconditioned_max_eig"] if self._eos_kind.startswith("adam") else values[
                f"{self.prefix}_max_eig"]
            values[EOS_RATIO] = curvature / eos_lib.threshold(self.optimizer_in_use())
        return values

