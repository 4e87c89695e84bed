"""Dynamical losses: a per-sample function (`loss_functions`, or any Keras loss through
`dynamical`) weighted by a `ClassWeightSchedule` Γ(t) at the optimizer's step t. Each class
takes the schedule's keyword arguments and Keras's `reduction`, `name`, `dtype`."""

import warnings

import keras
from keras import ops

from keras_dynloss import _compat, _state
from keras_dynloss import loss_functions as fn
from keras_dynloss._checks import check_bool, invalid
from keras_dynloss.schedules import ClassWeightSchedule

__all__ = ["DynamicalLoss", "DynamicalMeanSquaredError", "DynamicalComponentwiseMeanSquaredError",
           "Dynamical", "dynamical"]


class _Binding:
    """What a loss follows, and its state on a model; plain, so `model.save` does not walk it."""

    def __init__(self, source=None, state=None, model=None):
        self.source, self.state, self.model = source, state, model


class _DynamicalBase(keras.losses.Loss):
    """A per-sample loss (`_per_sample`) weighted by Γ(t) of a `ClassWeightSchedule`."""

    _function = None  # a function of `loss_functions`, whose name is the default loss name

    def __init__(self, num_classes, *, reduction="sum_over_batch_size", name=None, dtype=None,
                 **schedule):
        super().__init__(name=name or self._function.__name__, reduction=reduction, dtype=dtype)
        # Keras's Loss.get_config drops dtype: keep the policy's name to save it.
        self._dtype_name = keras.dtype_policies.get(dtype or keras.config.floatx()).name
        self.schedule = ClassWeightSchedule(num_classes, **schedule)
        self._binding = _Binding()
        self._warned = False

    @property
    def num_classes(self):
        return self.schedule.num_classes

    @property
    def dtype(self):
        """The compute dtype: float32 for a half-precision dtype or policy, else the policy's."""
        dtype = super().dtype
        return "float32" if dtype in ("float16", "bfloat16") else dtype

    def bind(self, source):
        """Follows the step of `source` (an optimizer's `iterations`); returns `self`.

        Args:
            source: a compiled `keras.Model` (its optimizer; also attaches the state that
                counts invalid labels), a `keras.optimizers.Optimizer` (custom loops), an
                integer variable, a non-negative int (a fixed step), or None (unbind).
        """
        if isinstance(source, keras.Model):
            if getattr(source, "optimizer", None) is None:
                raise invalid("source", "a compiled model (with an optimizer)", source)
            if self._binding.model is not source:
                state, step = _state.attach(source)
                self._binding = _Binding(step, state, source)
        elif isinstance(source, keras.optimizers.Optimizer):
            self._binding = _Binding(_state.OptimizerStep(source))
        elif source is None or (hasattr(source, "assign") and "int" in str(
                getattr(source, "dtype", ""))) or (isinstance(source, int) and not isinstance(
                    source, bool) and source >= 0):
            self._binding = _Binding(source)
        else:
            raise invalid("source", "a compiled keras.Model, a keras Optimizer, an integer "
                          "variable, a non-negative int or None", source)
        return self

    def at_step(self, step):
        """A copy fixed at `step` (an int, or an int tensor when traced), with no state."""
        if isinstance(step, int) and not isinstance(step, bool) and step < 0:
            raise invalid("step", "a non-negative step", step)
        fixed = object.__new__(type(self))  # copy.copy would round-trip through get_config
        fixed.__dict__.update(self.__dict__)
        fixed._binding = _Binding(step)
        return fixed

    @property
    def step(self):
        """The bound step source, variable, fixed step or tensor, or None when unbound."""
        return self._binding.source

    @property
    def state(self):
        """The `DynamicalLossState` on the bound model, or None."""
        return self._binding.state

    def current_step(self):
        """The step Γ is evaluated at (an integer tensor); 0, with one warning, when unbound."""
        source = self._binding.source
        if source is None:
            if not (self.schedule.constant or self._warned or _compat.in_symbolic_scope()):
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__} '{self.name}' follows no training step, so it uses Γ "
                    "at step 0 at every call. Pass `callbacks=[keras_dynloss.DynamicalLoss"
                    "Scheduler()]` to `fit` and `evaluate`, or call `loss.bind(model)` after "
                    "`compile`.", stacklevel=3)
            return ops.convert_to_tensor(0, "int32")
        return source.read() if hasattr(source, "read") else ops.convert_to_tensor(source)

    def weights_at(self, step):
        """Γ(step) as a NumPy array of the loss's dtype, shape (C,) (or `shape + (C,)`)."""
        return self.schedule.weights_at(step, dtype=self.dtype)

    def call(self, y_true, y_pred):
        y_pred = fn.prediction(y_pred)
        dtype = y_pred.dtype if "float" in str(y_pred.dtype) else self.dtype
        gamma = self.schedule(self.current_step(), dtype=dtype)
        counter = getattr(self._binding.state, "invalid_labels", None)
        return self._per_sample(y_true, y_pred, gamma, counter)

    def _per_sample(self, y_true, y_pred, gamma, counter):
        return self._function(y_true, y_pred, gamma, invalid_label_counter=counter)

    def get_config(self):
        return dict(super().get_config(), dtype=self._dtype_name, **self.schedule.get_config())


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalLoss(_DynamicalBase):
    """Dynamical cross-entropy (Ruiz-Garcia et al., ICML 2021).

    `F(t) = -(1/P) Σ_μ Γ_{y_μ}(t) log softmax(f(x_μ))_{y_μ}`, Keras's cross-entropy at
    `amplitude=1`. Labels: integers (B,) or (B, 1), or probabilities (B, C) (weight `Σ_i y_i Γ_i`).

    Args:
        num_classes: C (>= 2); `y_pred` has C outputs.
        from_logits: whether `y_pred` holds logits.

    Example:
        >>> loss = DynamicalLoss(3, amplitude=70, period=5000, from_logits=True)
        >>> model.compile(optimizer=keras.optimizers.SGD(1.0), loss=loss)
        >>> model.fit(x, y, callbacks=[DynamicalLossScheduler()])
    """

    def __init__(self, num_classes, *, from_logits=False, name="dynamical_loss", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)
        self.from_logits = check_bool("from_logits", from_logits)

    def _per_sample(self, y_true, y_pred, gamma, counter):
        return fn.dynamical_crossentropy(y_true, y_pred, gamma, from_logits=self.from_logits,
                                         invalid_label_counter=counter)

    def get_config(self):
        return dict(super().get_config(), from_logits=self.from_logits)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalMeanSquaredError(_DynamicalBase):
    """Dynamical MSE weighting each sample by its class's Γ (arXiv 2410.10690).

    `F(t) = (1/P) Σ_μ Γ_{y_μ}(t) (1/C) Σ_i (y_μi - f_μi)²`, one-hot targets from integer labels.

    Example:
        >>> model.compile("sgd", loss=DynamicalMeanSquaredError(10, amplitude=10, period=500))
    """

    _function = staticmethod(fn.dynamical_mean_squared_error)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalComponentwiseMeanSquaredError(_DynamicalBase):
    """Dynamical MSE weighting output component i by Γ_i (arXiv 2410.10690).

    `F(t) = (1/P) Σ_μ (1/C) Σ_i Γ_i(t) (y_μi - f_μi)²`, one-hot targets from integer labels.

    Example:
        >>> loss = DynamicalComponentwiseMeanSquaredError(10, amplitude=10, period=500)
    """

    _function = staticmethod(fn.dynamical_componentwise_mean_squared_error)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class Dynamical(_DynamicalBase):
    """Any per-sample loss made dynamical: `Γ_{c(y_μ)}(t) · ℓ(y_μ, f(x_μ))`, equal to `ℓ` at
    A = 1. The class `c(y_μ)` comes from the labels (integers weigh `Γ_y`, probabilities
    `Σ_i y_i Γ_i`) or from a callable.

    Args:
        num_classes: C (>= 2); `y_pred` has C outputs.
        loss: ℓ, a Keras loss (its unreduced `call`) or a callable
            `(y_true, y_pred) -> per-sample values (B,)`.
        classes: "auto", or a callable `y_true -> labels (B,) or probabilities (B, C)`
            (register it to save it).

    Example:
        >>> Dynamical(3, loss=keras.losses.Huber(), amplitude=10, period=500)
    """

    def __init__(self, num_classes, *, loss, classes="auto", name=None, **kwargs):
        loss, classes = (keras.saving.deserialize_keras_object(v) if isinstance(v, dict) else v
                         for v in (loss, classes))
        if not callable(loss):
            raise invalid("loss", "a Keras loss or a callable (y_true, y_pred) -> (B,)", loss)
        if not (classes == "auto" or callable(classes)):
            raise invalid("classes", "'auto' or a callable y_true -> labels or probabilities",
                          classes)
        super().__init__(num_classes, name=name or f"dynamical_{getattr(loss, 'name', 'loss')}",
                         **kwargs)
        self.loss, self.classes = loss, classes

    def _per_sample(self, y_true, y_pred, gamma, counter):
        auto = self.classes == "auto"
        sparse, y, valid = fn.split_labels(y_true if auto else self.classes(y_true), y_pred,
                                         self.num_classes)
        base = self.loss.call if isinstance(self.loss, keras.losses.Loss) else self.loss
        values = ops.cast(base(y if auto else y_true, y_pred), gamma.dtype)
        return fn.guard(fn.class_weight_of(sparse, y, gamma) * values, valid, counter)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return dict(super().get_config(), loss=serialize(self.loss),
                    classes="auto" if self.classes == "auto" else serialize(self.classes))


def dynamical(loss, num_classes, *, amplitude, period, classes="auto", **kwargs):
    """`Dynamical(num_classes, loss=loss, ...)`: makes any per-sample loss dynamical.

    Example:
        >>> focal = dynamical(keras.losses.CategoricalFocalCrossentropy(from_logits=True), 10,
        ...                   amplitude=10, period=500)
        >>> model.compile("sgd", loss=focal)
    """
    return Dynamical(num_classes, loss=loss, classes=classes, amplitude=amplitude, period=period,
                     **kwargs)
