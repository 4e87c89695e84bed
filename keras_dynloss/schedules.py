"""Class-weight schedules Γ(t): pure functions of the optimizer step.

A schedule maps an integer step ``t`` (any shape) to class weights of shape
``t.shape + (C,)``. It is the composition of three small pieces:

* the *emphasis*: which classes period ``k = t // T`` emphasises, a 0/1 mask of
  shape (C,) (cyclic, seeded random permutation per cycle, or explicit groups);
* the *profile*: how strongly, ``h(φ) ∈ [0, 1]`` of the phase ``φ = (t mod T) / T``;
* the *normalisation*: raw weights ``w_i = 1 + (A - 1) h(φ) m_i`` rescaled so
  that ``Σ_i Γ_i = C``.

With ``shape="triangular"`` (the paper's), ``h(φ) = 1 - |2φ - 1|``: the emphasised
class's raw weight rises linearly from 1 at the period's start to ``A`` at
``T/2`` and falls back to 1. With ``A = 70, C = 3`` the peak weights are
``3·70/72 = 2.917`` and ``3/72 = 0.042``. From ``static_after`` on, ``Γ ≡ 1``.

The functions that build graph code are marked
``tf.autograph.experimental.do_not_convert``: they have no tensor-dependent
Python control flow, and AutoGraph converts a function by re-reading its source
file from disk, so a source file edited while a process runs (an editable
install) would otherwise trace the wrong code into a ``tf.function``.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_dynloss import _class_order
from keras_dynloss._checks import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    invalid,
)

__all__ = ["ClassWeightSchedule", "triangular", "sine", "square", "PROFILES"]


@tf.autograph.experimental.do_not_convert
def triangular(phase):
    """Triangle profile ``h(φ) = 1 - |2φ - 1|``: 0 at the period's ends, 1 at T/2."""
    return 1.0 - tf.abs(2.0 * phase - 1.0)


@tf.autograph.experimental.do_not_convert
def sine(phase):
    """Smooth profile ``h(φ) = sin(π φ)``: same endpoints and peak as the triangle."""
    return tf.sin(math.pi * phase)


@tf.autograph.experimental.do_not_convert
def square(phase):
    """Constant profile ``h(φ) = 1``: the emphasised class holds ``A`` all period."""
    return tf.ones_like(phase)


PROFILES = {"triangular": triangular, "sine": sine, "square": square}

def deserialize_profile(config):
    """``config`` with a serialized custom ``shape`` callable turned back into it."""
    config = dict(config)
    if isinstance(config.get("shape"), dict):
        config["shape"] = keras.saving.deserialize_keras_object(config["shape"])
    return config


@keras.saving.register_keras_serializable(package="keras_dynloss")
class ClassWeightSchedule:
    """Γ(t): per-class weights of a dynamical loss at optimizer step ``t``.

    ``Γ_i(t) = C · w_i(t) / Σ_j w_j(t)`` (or ``w_i(t)`` if ``normalize=False``), with
    ``w_i(t) = 1 + (A - 1) · h((t mod T) / T) · m_i(t // T)``, where ``h`` is the
    profile and ``m(k)`` the 0/1 mask of the classes emphasised in period ``k``.
    For ``t >= static_after``, ``Γ(t) = 1``.

    Args:
        num_classes: C, number of classes (>= 2).
        amplitude: A >= 1, ratio of the emphasised raw weight to the others at
            the profile's peak. ``A = 1`` gives ``Γ ≡ 1`` (plain loss).
        period: T, steps per period (> 0). Each period emphasises one group.
        shape: ``"triangular"`` (the paper's), ``"sine"``, ``"square"``, or a
            callable ``h(phase) -> tensor`` mapping a phase tensor in [0, 1)
            (float64 when Γ is asked for in float64, else float32) to values in
            [0, 1] of the same shape, built from tensor ops (it is called
            without AutoGraph: ``tf.where``, not a Python ``if`` on tensors).
            A custom callable must be registered with
            ``keras.saving.register_keras_serializable`` to survive ``model.save``.
        normalize: rescale so that ``Σ_i Γ_i = C``.
        class_order: ``"cyclic"`` (period k emphasises group ``k mod G``),
            ``"random"`` (a fresh seeded permutation of the classes each cycle of
            ``G`` periods), or an explicit sequence whose items are class indices
            or sequences of class indices (one group per period, cycled).
        group_size: classes emphasised together per period, for ``"cyclic"`` and
            ``"random"`` (consecutive classes for cyclic). ``G = ceil(C / size)``.
        static_after: step S from which ``Γ ≡ 1`` (the paper's final static
            period), or None.
        seed: integer seed of the ``"random"`` order.

    Example:
        >>> s = ClassWeightSchedule(3, amplitude=70, period=5000)
        >>> s.weights_at(2500).round(3)
        array([2.917, 0.042, 0.042])
    """

    def __init__(
        self,
        num_classes,
        *,
        amplitude,
        period,
        shape="triangular",
        normalize=True,
        class_order="cyclic",
        group_size=1,
        static_after=None,
        seed=0,
    ):
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.amplitude = check_number("amplitude", amplitude, minimum=1)
        self.period = check_int("period", period, minimum=1)
        if callable(shape):
            self._profile = shape
        else:
            check_choice("shape", shape, tuple(PROFILES))
            self._profile = PROFILES[shape]
        self.shape = shape
        self.normalize = check_bool("normalize", normalize)
        self.group_size = check_int(
            "group_size", group_size, minimum=1, maximum=self.num_classes
        )
        self.static_after = (
            None
            if static_after is None
            else check_int("static_after", static_after, minimum=0)
        )
        self.seed = check_int("seed", seed)
        self.class_order = _class_order.check_class_order(class_order, num_classes)
        self._groups_table = _class_order.groups_table(
            self.class_order, self.num_classes, self.group_size
        )
        self._tables = {}

    @property
    def num_groups(self):
        """G: periods per cycle (groups emphasised in turn)."""
        if self._groups_table is not None:
            return self._groups_table.shape[0]
        return -(-self.num_classes // self.group_size)

    # -- the schedule ----------------------------------------------------

    @tf.autograph.experimental.do_not_convert
    def emphasis(self, period_index):
        """0/1 mask of the emphasised classes, shape ``period_index.shape + (C,)``.

        Args:
            period_index: int64 tensor ``k = t // T`` of any shape.
        """
        k = tf.convert_to_tensor(period_index, tf.int64)
        if self._groups_table is None:
            return _class_order.random_emphasis(
                k, self.seed, self.num_classes, self.group_size
            )
        slot = tf.math.floormod(k, self.num_groups)
        return tf.gather(tf.constant(self._groups_table), slot)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, step, dtype="float32"):
        """Γ(step) as a tensor of shape ``step.shape + (C,)``.

        For cyclic and explicit orders Γ is periodic with period ``G·T``; when that
        table has at most ``2**20`` entries it is computed once by :meth:`formula`
        and looked up (two ops per step instead of about fifteen).

        Args:
            step: integer step(s) ``t >= 0``, any shape; int64 is used inside so
                very large steps are exact.
            dtype: float dtype of the result.
        """
        dtype = tf.as_dtype(dtype)
        t = tf.cast(step, tf.int64)
        table = self._table(dtype)
        if table is None:
            return self.formula(t, dtype)
        return self._static(t, tf.gather(table, tf.math.floormod(t, table.shape[0])))

    def _table(self, dtype):
        """Γ over one cycle, shape (G·T, C) (one row of ones when A = 1), or None
        when Γ is not periodic (random order) or the table would be too large."""
        if self.amplitude == 1:
            return tf.ones((1, self.num_classes), dtype)
        if self._groups_table is None:
            return None
        length = self.num_groups * self.period
        if length * self.num_classes > 2**20:
            return None
        key = dtype.name
        if key not in self._tables:
            with tf.init_scope():
                steps = tf.range(length, dtype=tf.int64)
                self._tables[key] = self.formula(steps, dtype, static=False)
        return self._tables[key]

    @tf.autograph.experimental.do_not_convert
    def formula(self, step, dtype="float32", static=True):
        """Γ(step) computed from its definition (see the class docstring)."""
        dtype = tf.as_dtype(dtype)
        t = tf.cast(step, tf.int64)
        k = tf.math.floordiv(t, self.period)
        # The phase in float64 for a float64 Γ (exact to rounding), else float32
        # (float16/bfloat16 cannot even represent (t mod T) / T for large T).
        phase_dtype = tf.float64 if dtype == tf.float64 else tf.float32
        phase = tf.cast(t - k * self.period, phase_dtype) / tf.constant(
            self.period, phase_dtype
        )
        h = tf.cast(self._profile(phase), dtype)
        mask = tf.cast(self.emphasis(k), dtype)
        raw = 1.0 + (self.amplitude - 1.0) * h[..., None] * mask
        if self.normalize:
            gamma = (self.num_classes * raw) / tf.reduce_sum(raw, -1, keepdims=True)
        else:
            gamma = raw
        return self._static(t, gamma) if static else gamma

    def _static(self, t, gamma):
        """Γ ≡ 1 from ``static_after`` on."""
        if self.static_after is None:
            return gamma
        return tf.where((t >= self.static_after)[..., None], tf.ones_like(gamma), gamma)

    def weights_at(self, step, dtype="float32"):
        """Γ(step) as a NumPy array: shape (C,) for a scalar step, else
        ``np.shape(step) + (C,)``, of ``dtype``. Runs the same function the graph
        runs."""
        step = np.asarray(step)
        if (
            step.dtype.kind not in "iu"
            or np.any(step < 0)
            or np.any(step > np.iinfo(np.int64).max)
        ):
            raise invalid("step", "non-negative integer step(s) < 2**63", step.tolist())
        return self(tf.constant(step, tf.int64), dtype=dtype).numpy()

    def emphasized_at(self, step):
        """Indices of the classes emphasised at ``step`` (empty when static or A=1)."""
        step = int(step)
        if self.amplitude == 1 or (
            self.static_after is not None and step >= self.static_after
        ):
            return np.zeros((0,), np.int64)
        mask = self.emphasis(tf.constant(step // self.period, tf.int64)).numpy()
        return np.flatnonzero(mask)

    # -- copies and serialization -----------------------------------------

    def _arguments(self):
        """The constructor arguments, the profile as given (maybe a callable)."""
        return {
            "num_classes": self.num_classes,
            "amplitude": self.amplitude,
            "period": self.period,
            "shape": self.shape,
            "normalize": self.normalize,
            "class_order": self.class_order,
            "group_size": self.group_size,
            "static_after": self.static_after,
            "seed": self.seed,
        }

    def with_period(self, period):
        """A new schedule equal to this one but with period ``period``.

        Keeps the profile object itself, so a lambda or ``functools.partial``
        profile (which ``get_config`` / ``from_config`` cannot rebuild) works.
        This schedule is left unchanged.
        """
        return type(self)(**dict(self._arguments(), period=period))

    def get_config(self):
        config = self._arguments()
        if callable(config["shape"]):
            config["shape"] = keras.saving.serialize_keras_object(config["shape"])
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**deserialize_profile(config))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"ClassWeightSchedule({args})"
