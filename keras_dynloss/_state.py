"""The training state a dynamical loss keeps on its model, and where it reads the step.

`DynamicalLossState` is a `keras.metrics.Metric` attached to the model (so its variables are
in `model.metrics_variables`, which every backend's trainer maps while the loss runs):

* `step`: under JAX, a mirror of `optimizer.iterations` (see `install`);
* `invalid_labels`: labels found invalid where no assertion can run.

It is never reset by Keras's per-epoch `reset_metrics` and logs nothing.

Step sources (`source.read()` inside the compiled step):

* `OptimizerStep` (TensorFlow, PyTorch): `optimizer.iterations` itself.
* `MirrorStep` (JAX): Keras's JAX trainer maps trainable, non-trainable and metrics
  variables while it computes the loss, not the optimizer's, so the loss reads the `step`
  mirror; `install` wraps the model's `train_step` so that every compiled step first sets
  the mirror from `optimizer.iterations` read from that step's own optimizer state (exact
  under `steps_per_execution`, gradient accumulation and loss scaling).
"""

import keras
from keras import ops

from keras_dynloss import _compat

__all__ = []


class OptimizerStep:
    """`optimizer.iterations`, read at each call. A plain object, so that `model.save` does
    not walk into the optimizer a second time through the loss."""

    __slots__ = ("optimizer",)

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def read(self):
        return ops.convert_to_tensor(self.optimizer.iterations)


class VariableStep:
    """An integer variable of the user's (e.g. a custom loop's own step), read at each call."""

    __slots__ = ("variable",)

    def __init__(self, variable):
        self.variable = variable

    def read(self):
        return ops.convert_to_tensor(self.variable)


class MirrorStep:
    """The JAX step mirror of a `DynamicalLossState` (kept in sync by `install`)."""

    __slots__ = ("optimizer", "state")

    def __init__(self, optimizer, state):
        self.optimizer, self.state = optimizer, state

    def read(self):
        return ops.convert_to_tensor(self.state.step)

    def sync(self):
        """Sets the mirror from the optimizer now (outside compiled steps). A copy: a shared
        buffer would be deleted with the first compiled step that donates its state."""
        self.state.step.assign(ops.copy(ops.cast(self.optimizer.iterations, self.state.step.dtype)))


class DynamicalLossState(keras.metrics.Metric):
    """Variables of one dynamical loss on its model (see the module docstring)."""

    def __init__(self, name="dynamical_loss_state"):
        super().__init__(name=name)
        self.step = self.add_variable(shape=(), dtype="int32", initializer="zeros",
                                      aggregation="only_first_replica", name="step")
        self.invalid_labels = self.add_variable(shape=(), dtype="int32", initializer="zeros",
                                                aggregation="sum", name="invalid_labels")

    def update_state(self, *args, **kwargs):
        """Unused: the loss counts invalid labels itself."""

    def reset_state(self):
        """Kept across epochs: the scheduler resets the count."""

    def result(self):
        return {}


def states(model):
    """The `DynamicalLossState`s attached to `model` (see `attach`)."""
    return list(getattr(model, "_keras_dynloss_states", []))


def attach(model, state):
    """Attaches `state` to `model`: it is then in `model.metrics` / `metrics_variables`."""
    _compat.track(model, "_keras_dynloss_states", states(model) + [state])
    if keras.backend.backend() == "jax":
        install(model)


def install(model):
    """JAX: wraps `model.train_step` once so that each compiled step sets the step mirrors
    from `optimizer.iterations` read from the step's own optimizer state."""
    if getattr(model, "_keras_dynloss_original_train_step", None) is not None:
        return
    original = model.train_step

    def train_step(state, data):
        return original(mirrored(model, state), data)

    model._keras_dynloss_original_train_step = original
    model.train_step = train_step
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)


def mirrored(model, state):
    """A JAX train state `(trainable, non_trainable, optimizer, metrics)` whose step mirrors
    hold `optimizer.iterations` of that state."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    mapping = list(zip(model.optimizer.variables, optimizer_values))
    with keras.StatelessScope(state_mapping=mapping):
        step = ops.convert_to_tensor(model.optimizer.iterations)
    mirrors = {id(s.step) for s in states(model)}
    metrics_values = [ops.cast(step, v.dtype) if id(v) in mirrors else value
                      for v, value in zip(model.metrics_variables, metrics_values)]
    return trainable, non_trainable, optimizer_values, metrics_values
