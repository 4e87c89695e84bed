"""The state a dynamical loss keeps on its model (a metric: every trainer maps its variables),
and where it reads the step; under JAX `step` mirrors `optimizer.iterations` (docs/design.md)."""

import keras
from keras import ops

from keras_dynloss import _compat


class OptimizerStep:
    """`optimizer.iterations` (under JAX its `mirror`); plain, so `model.save` skips it."""

    def __init__(self, optimizer, mirror=None):
        self.optimizer, self.mirror = optimizer, mirror

    def read(self):
        return ops.convert_to_tensor(self.optimizer.iterations if self.mirror is None
                                     else self.mirror)

    def sync(self):
        """Sets the mirror from the optimizer now, as a copy (compiled steps donate buffers)."""
        if self.mirror is not None:
            self.mirror.assign(ops.copy(ops.cast(self.optimizer.iterations, self.mirror.dtype)))


class DynamicalLossState(keras.metrics.Metric):
    """`step` and `invalid_labels` of one dynamical loss on its model."""

    def __init__(self, name="dynamical_loss_state"):
        super().__init__(name=name)
        self.step = self.add_variable(shape=(), dtype="int32", initializer="zeros",
                                      aggregation="only_first_replica", name="step")
        self.invalid_labels = self.add_variable(shape=(), dtype="int32", initializer="zeros",
                                                aggregation="sum", name="invalid_labels")

    def update_state(self, *args, **kwargs):  # the loss counts invalid labels itself
        pass

    def reset_state(self):  # kept across epochs: the scheduler resets the count
        pass

    def result(self):
        return {}


def states(model):
    """The `DynamicalLossState`s attached to `model`."""
    return list(getattr(model, "_keras_dynloss_states", []))


def attach(model):
    """`(state, step source)` of a loss bound to `model`, with a new state on the model."""
    state = DynamicalLossState()
    _compat.track(model, "_keras_dynloss_states", states(model) + [state])
    if keras.backend.backend() != "jax":
        return state, OptimizerStep(model.optimizer)
    if getattr(model, "_keras_dynloss_original_train_step", None) is None:
        original = model.train_step  # wrapped once: each step sets every mirror

        def train_step(train_state, data):
            return original(mirrored(model, train_state), data)

        model._keras_dynloss_original_train_step = original
        model.train_step = train_step
        if getattr(model, "train_function", None) is not None:
            model.make_train_function(force=True)
    source = OptimizerStep(model.optimizer, state.step)
    source.sync()
    return state, source


def mirrored(model, state):
    """The JAX train state `state` with its step mirrors set from its optimizer's step."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    mapping = list(zip(model.optimizer.variables, optimizer_values))
    with keras.StatelessScope(state_mapping=mapping):
        step = ops.convert_to_tensor(model.optimizer.iterations)
    mirrors = {id(s.step) for s in states(model)}
    metrics_values = [ops.cast(step, v.dtype) if id(v) in mirrors else value
                      for v, value in zip(model.metrics_variables, metrics_values)]
    return trainable, non_trainable, optimizer_values, metrics_values
