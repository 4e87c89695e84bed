"""Dynamical losses: a per-sample loss weighted by its class's weight Γ(t).

Each class composes a per-sample function (`keras_dynloss.loss_functions`, or any Keras loss
through `dynamical`) with a `ClassWeightSchedule` evaluated at the training step `t`: the
optimizer's `iterations`, bound by `DynamicalLossScheduler` (or `loss.bind(model)`).
"""

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
    """What a loss follows: a step source (`read()`), a fixed step, or a tensor; and its
    `DynamicalLossState` on a model. A plain object, so `model.save` does not walk it."""

    __slots__ = ("source", "state", "model")

    def __init__(self, source=None, state=None, model=None):
        self.source, self.state, self.model = source, state, model


class _DynamicalBase(keras.losses.Loss):
    """A per-sample loss (`_per_sample`) weighted by Γ(t) of a `ClassWeightSchedule`."""

    def __init__(self, num_classes, *, reduction="sum_over_batch_size", name=None, dtype=None,
                 **schedule):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
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

    # -- the training step ---------------------------------------------------------------
    def bind(self, source):
        """Follows the step of `source`; returns `self`.

        The step t of Γ(t) is the optimizer's `iterations`, read inside the compiled step:
        the number of *updates* applied so far (with `gradient_accumulation_steps=N` the N
        micro-batches of one update share t; under a `LossScaleOptimizer` a skipped step does
        not advance it).

        Args:
            source: a compiled `keras.Model` (its optimizer; also attaches the state that
                counts invalid labels and logs Γ, see `DynamicalLossScheduler`), a
                `keras.optimizers.Optimizer` (custom loops on TensorFlow / PyTorch), an
                integer variable, a non-negative int (a fixed step), or None (unbind).
        """
        if isinstance(source, keras.Model):
            if getattr(source, "optimizer", None) is None:
                raise invalid("source", "a compiled model (with an optimizer)", source)
            self._bind_model(source)
        elif isinstance(source, keras.optimizers.Optimizer):
            self._binding = _Binding(_state.OptimizerStep(source))
        elif hasattr(source, "assign") and "int" in str(getattr(source, "dtype", "")):
            self._binding = _Binding(_state.VariableStep(source))
        elif source is None or (isinstance(source, int) and not isinstance(source, bool)
                                and source >= 0):
            self._binding = _Binding(source)
        else:
            raise invalid("source", "a compiled keras.Model, a keras Optimizer, an integer "
                          "variable, a non-negative int or None", source)
        return self

    def _bind_model(self, model):
        binding = self._binding
        if binding.model is model:
            return
        state = _state.DynamicalLossState()
        _state.attach(model, state)
        if keras.backend.backend() == "jax":
            source = _state.MirrorStep(model.optimizer, state)
            source.sync()
        else:
            source = _state.OptimizerStep(model.optimizer)
        self._binding = _Binding(source, state, model)

    def at_step(self, step):
        """A copy fixed at `step` (an int, or an integer scalar tensor inside a traced
        function), with no state: for probes and analysis."""
        fixed = object.__new__(type(self))  # copy.copy would round-trip through get_config
        fixed.__dict__.update(self.__dict__)
        if isinstance(step, int) and not isinstance(step, bool) and step < 0:
            raise invalid("step", "a non-negative step", step)
        fixed._binding = _Binding(step)
        return fixed

    @property
    def step(self):
        """The bound step source, fixed step or tensor, or None when unbound."""
        return self._binding.source

    @property
    def state(self):
        """The `DynamicalLossState` on the bound model, or None."""
        return self._binding.state

    def current_step(self):
        """The step Γ is evaluated at (an integer tensor)."""
        source = self._binding.source
        if source is None:
            static = (not callable(self.schedule.amplitude) and self.schedule.amplitude == 1) or (
                self.schedule.static_after == 0)
            if not (static or self._warned or _compat.in_symbolic_scope()):
                self._warned = True
                warnings.warn(
                    f"{type(self).__name__} '{self.name}' follows no training step, so it uses "
                    "Γ at step 0 at every call. Pass "
                    "`callbacks=[keras_dynloss.DynamicalLossScheduler()]` to `fit` and "
                    "`evaluate`, or call `loss.bind(model)` after `compile`.", stacklevel=3)
            return ops.convert_to_tensor(0, "int32")
        if hasattr(source, "read"):
            return source.read()
        return ops.convert_to_tensor(source)

    def weights_at(self, step):
        """Γ(step) as a NumPy array of the loss's dtype, shape (C,) (or `shape + (C,)`)."""
        return self.schedule.weights_at(step, dtype=self.dtype)

    # -- the loss ------------------------------------------------------------------------
    def call(self, y_true, y_pred):
        y_pred = fn.prediction(y_pred)
        dtype = y_pred.dtype if "float" in str(y_pred.dtype) else self.dtype
        gamma = self.schedule(self.current_step(), dtype=dtype)
        state = self._binding.state
        counter = None if state is None else state.invalid_labels
        return self._per_sample(y_true, y_pred, gamma, counter)

    def _per_sample(self, y_true, y_pred, gamma, counter):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self._dtype_name
        config.update(self.schedule.get_config())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("amplitude", "shape"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _dynamical_losses(model):
    found = []
    for loss in keras.tree.flatten(getattr(model, "loss", None)):
        if isinstance(loss, _DynamicalBase):
            found.append(loss)
    return found


_DOC_ARGS = """
    Args:
        num_classes: C (>= 2); `y_pred` has C outputs.
        amplitude: A >= 1 (the paper uses 70 on the spiral), or a schedule A(t).
        period: T, steps per period (`DynamicalLossScheduler(period_epochs=...)` sets it
            from epochs).
        shape: "triangular" (the paper's), "sine", "square" or a callable profile.
        normalize: rescale Γ so that `Σ_i Γ_i = C`.
        class_order: "cyclic", "random" (seeded permutation each cycle) or an explicit
            sequence of classes / groups of classes.
        group_size: classes emphasised together in one period.
        static_after: step from which Γ ≡ 1 (the paper's last, static period).
        start_after: steps of Γ ≡ 1 before the first period.
        seed: seed of the random class order.
        reduction, name: as for any `keras.losses.Loss`.
        dtype: as for any `keras.losses.Loss` (and saved by `model.save`); a half-precision
            dtype or policy computes in float32; "float64" computes Γ and the loss in
            float64.
"""


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalLoss(_DynamicalBase):
    __doc__ = """Dynamical cross-entropy (Ruiz-Garcia et al., ICML 2021).

    `F(t) = -(1/P) Σ_μ Γ_{y_μ}(t) log softmax(f(x_μ))_{y_μ}`, with Γ(t) a
    `ClassWeightSchedule` at optimizer step t. `amplitude=1` is exactly
    `SparseCategoricalCrossentropy` / `CategoricalCrossentropy`. Labels: integers (B,) or
    (B, 1), or probabilities (B, C) (weight `Σ_i y_i Γ_i`); see `loss_functions` for
    invalid ones. `sample_weight` and `fit(class_weight=...)` multiply Γ.
    """ + _DOC_ARGS + """        from_logits: whether `y_pred` holds logits.

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
    __doc__ = """Dynamical MSE weighting each sample by its class's Γ (arXiv 2410.10690).

    `F(t) = (1/P) Σ_μ Γ_{y_μ}(t) (1/C) Σ_i (y_μi - f_μi)²` with one-hot targets.
    """ + _DOC_ARGS

    def __init__(self, num_classes, *, name="dynamical_mean_squared_error", **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def _per_sample(self, y_true, y_pred, gamma, counter):
        return fn.dynamical_mean_squared_error(y_true, y_pred, gamma,
                                               invalid_label_counter=counter)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class DynamicalComponentwiseMeanSquaredError(_DynamicalBase):
    __doc__ = """Dynamical MSE weighting output component i by Γ_i (arXiv 2410.10690).

    `F(t) = (1/P) Σ_μ (1/C) Σ_i Γ_i(t) (y_μi - f_μi)²` with one-hot targets.
    """ + _DOC_ARGS

    def __init__(self, num_classes, *, name="dynamical_componentwise_mean_squared_error",
                 **kwargs):
        super().__init__(num_classes, name=name, **kwargs)

    def _per_sample(self, y_true, y_pred, gamma, counter):
        return fn.dynamical_componentwise_mean_squared_error(y_true, y_pred, gamma,
                                                             invalid_label_counter=counter)


@keras.saving.register_keras_serializable(package="keras_dynloss")
class Dynamical(_DynamicalBase):
    __doc__ = """Any per-sample loss made dynamical: `Γ_{c(y_μ)}(t) · ℓ(y_μ, f(x_μ))`.

    `ℓ` is a Keras loss (its unreduced `call`) or a callable `(y_true, y_pred) -> (B,)`;
    `c(y_μ)` is the sample's class: from the labels themselves (`classes="auto"`: integer
    labels (B,) / (B, 1) weigh `Γ_y`, probabilities (B, C) weigh `Σ_i y_i Γ_i`), or from a
    callable `classes(y_true) -> labels (B,) or probabilities (B, C)` (e.g. for multi-label
    targets). Invalid classes are handled as in `loss_functions`. At A = 1 it equals `ℓ`.
    Build it with `dynamical(loss, num_classes, ...)`.
    """ + _DOC_ARGS + """        loss: the per-sample loss ℓ.
        classes: "auto" or a callable giving each sample's class (register it to save it).
    """

    def __init__(self, num_classes, *, loss, classes="auto", name=None, **kwargs):
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if isinstance(classes, dict):
            classes = keras.saving.deserialize_keras_object(classes)
        if not callable(loss):
            raise invalid("loss", "a Keras loss or a callable (y_true, y_pred) -> (B,)", loss)
        if not (classes == "auto" or callable(classes)):
            raise invalid("classes", "'auto' or a callable y_true -> labels or probabilities",
                          classes)
        super().__init__(num_classes, name=name or f"dynamical_{getattr(loss, 'name', 'loss')}",
                         **kwargs)
        self.loss, self.classes = loss, classes

    def _per_sample(self, y_true, y_pred, gamma, counter):
        if self.classes == "auto":
            kind, y, valid = fn.split_labels(y_true, y_pred, self.num_classes)
            base_true = y
        else:
            kind, y, valid = fn.split_labels(self.classes(y_true), y_pred, self.num_classes)
            base_true = y_true
        base = self.loss.call if isinstance(self.loss, keras.losses.Loss) else self.loss
        values = ops.cast(base(base_true, y_pred), gamma.dtype)
        return fn.guard(fn.class_weight_of(kind, y, gamma) * values, valid, counter)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return dict(super().get_config(), loss=serialize(self.loss),
                    classes=self.classes if self.classes == "auto" else serialize(self.classes))


def dynamical(loss, num_classes, *, amplitude, period, classes="auto", **kwargs):
    """Makes any per-sample loss dynamical: returns a `Dynamical` loss.

    Args:
        loss: a Keras loss (e.g. `keras.losses.CategoricalFocalCrossentropy()`) or a callable
            `(y_true, y_pred) -> per-sample values (B,)`.
        num_classes: C.
        amplitude, period: A and T of the schedule (other schedule arguments and
            `reduction`, `name`, `dtype` as for `DynamicalLoss`).
        classes: "auto" (from integer labels or probabilities) or a callable
            `y_true -> labels (B,) or probabilities (B, C)`.

    Example:
        >>> focal = dynamical(keras.losses.CategoricalFocalCrossentropy(from_logits=True), 10,
        ...                   amplitude=10, period=500)
        >>> model.compile("sgd", loss=focal)
    """
    return Dynamical(num_classes, loss=loss, classes=classes, amplitude=amplitude, period=period,
                     **kwargs)
