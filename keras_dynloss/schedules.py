"""Class-weight schedules Γ(t): pure functions of the optimizer step, on `keras.ops`.

A schedule maps an integer step `t` (any shape) to class weights of shape `t.shape + (C,)`,
composed of three small pieces:

* the *emphasis*: which classes period `k = t // T` emphasises, a 0/1 mask of shape (C,)
  (cyclic, explicit groups, or a seeded random permutation per cycle);
* the *profile*: how strongly, `h(φ) ∈ [0, 1]` of the phase `φ = (t mod T) / T`;
* the *normalisation*: raw weights `w_i = 1 + (A - 1) h(φ) m_i` rescaled so that
  `Σ_i Γ_i = C`.

With the paper's triangular profile `h(φ) = 1 - |2φ - 1|` the emphasised class's raw weight
rises from 1 to A at T/2 and falls back to 1; with A = 70 and C = 3 the peak weights are
`3·70/72 = 2.917` and `3/72 = 0.042`.
"""

import keras
import numpy as np
from keras import ops

from keras_dynloss import backend
from keras_dynloss._checks import check_bool, check_choice, check_int, check_number, invalid

__all__ = ["ClassWeightSchedule", "triangular", "sine", "square", "PROFILES"]


def triangular(phase):
    """Triangle `h(φ) = 1 - |2φ - 1|`: 0 at the period's ends, 1 at its middle."""
    return 1.0 - ops.abs(2.0 * phase - 1.0)


def sine(phase):
    """`h(φ) = sin(π φ)`: the triangle's endpoints and peak, smooth."""
    return ops.sin(np.pi * phase)


def square(phase):
    """`h(φ) = 1`: the emphasised class holds A all period."""
    return ops.ones_like(phase)


PROFILES = {"triangular": triangular, "sine": sine, "square": square}

# -- the random class order: a fixed integer hash of (seed, cycle, class) --------------------
# Residues modulo the prime P = 2**31 - 1, multiplied by Schrage's method, so that no
# intermediate leaves int32: the same keys on every backend, with or without int64. The
# tensors' own operators keep the step's integer dtype.
_P = 2147483647
_ROUNDS = ((48271, 11, 15), (69621, 7, 13), (16807, 3, 16))


def _add_mod(x, y):
    """(x + y) mod P for x, y in [0, P]."""
    s = x - (_P - y)
    return s + _P * ops.cast(s < 0, s.dtype)


def _mix(x):
    for a, offset, shift in _ROUNDS:
        q, r = divmod(_P, a)
        x = a * (x % q) - r * (x // q)  # a x mod P (Schrage)
        x = _add_mod(x + _P * ops.cast(x < 0, x.dtype), offset)
        x = ops.bitwise_xor(x, ops.right_shift(x, shift))
    return x


def _random_ranks(seed, cycle, num_classes):
    """The rank of each class in cycle `cycle`'s permutation, shape `cycle.shape + (C,)`."""
    key = _mix(seed % _P + 0 * cycle)
    key = _mix(_add_mod(key, cycle % _P))
    key = _mix(_add_mod(key, cycle // _P))
    classes = _mix(ops.arange(1, num_classes + 1, dtype=cycle.dtype))
    keys = _mix(_add_mod(key[..., None], classes))
    return ops.argsort(ops.argsort(keys))


def _check_class_order(class_order, num_classes):
    """"cyclic", "random", or the explicit order as a list of groups (lists of ints)."""
    if isinstance(class_order, str):
        return check_choice("class_order", class_order, ("cyclic", "random"))
    expected = (f"'cyclic', 'random', or a non-empty sequence of class indices in "
                f"[0, {num_classes}) or of non-empty groups of them")
    if not isinstance(class_order, (list, tuple)) or not class_order:
        raise invalid("class_order", expected, class_order)
    groups = []
    for item in class_order:
        group = list(item) if isinstance(item, (list, tuple)) else [item]
        if not group or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                                and 0 <= c < num_classes for c in group):
            raise invalid("class_order", expected, class_order)
        groups.append([int(c) for c in group])
    return groups


def _serialize(value):
    return keras.saving.serialize_keras_object(value) if callable(value) else value


def _deserialize(value):
    return keras.saving.deserialize_keras_object(value) if isinstance(value, dict) else value


@keras.saving.register_keras_serializable(package="keras_dynloss")
class ClassWeightSchedule:
    """Γ(t): the per-class weights of a dynamical loss at optimizer step `t`.

    `Γ_i(t) = C · w_i(t) / Σ_j w_j(t)` (or `w_i(t)` with `normalize=False`), where
    `w_i(t) = 1 + (A(t) - 1) · h((s mod T) / T) · m_i(s // T)` with `s = t - start_after`,
    `h` the profile and `m(k)` the 0/1 mask of the classes period `k` emphasises.
    `Γ(t) = 1` for `t < start_after` and for `t >= static_after`.

    Args:
        num_classes: C (>= 2).
        amplitude: A >= 1, the ratio of the emphasised raw weight to the others at the
            profile's peak (A = 1 is the plain loss); or a schedule `A(t)`, e.g. a
            `keras.optimizers.schedules.LearningRateSchedule` decaying to 1 (its values
            must stay >= 1; register a custom callable with
            `keras.saving.register_keras_serializable` to save it).
        period: T, steps per period (>= 1).
        shape: "triangular" (the paper's), "sine", "square", or a callable profile
            `h(phase) -> [0, 1]` written with `keras.ops` (phase in [0, 1), float32, or
            float64 for a float64 Γ); register it to save it.
        normalize: rescale so that `Σ_i Γ_i = C`.
        class_order: "cyclic" (period k emphasises group `k mod G`), "random" (a fresh
            seeded permutation of the classes every cycle of G periods), or an explicit
            sequence of classes or groups of classes (cycled).
        group_size: classes emphasised together per period ("cyclic" and "random");
            `G = ceil(C / group_size)`.
        static_after: step from which Γ ≡ 1 (the paper's last, static period), or None.
        start_after: steps of Γ ≡ 1 before the first period (a static warm-up), or None.
        seed: seed of the "random" order.

    Example:
        >>> s = ClassWeightSchedule(3, amplitude=70, period=5000)
        >>> s.weights_at(2500).round(3)
        array([2.917, 0.042, 0.042], dtype=float32)
    """

    def __init__(self, num_classes, *, amplitude, period, shape="triangular", normalize=True,
                 class_order="cyclic", group_size=1, static_after=None, start_after=None,
                 seed=0):
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if callable(amplitude):
            first = float(ops.convert_to_numpy(amplitude(0)))
            if not first >= 1:
                raise invalid("amplitude", "a schedule whose values are >= 1",
                              f"{amplitude!r} with A(0)={first}")
            self.amplitude = amplitude
        else:
            self.amplitude = check_number("amplitude", amplitude, minimum=1)
        self.period = check_int("period", period, minimum=1)
        if not callable(shape):
            check_choice("shape", shape, tuple(PROFILES))
        self.shape = shape
        self.normalize = check_bool("normalize", normalize)
        self.group_size = check_int("group_size", group_size, minimum=1, maximum=num_classes)
        self.static_after = check_int("static_after", static_after, minimum=0, allow_none=True)
        self.start_after = check_int("start_after", start_after, minimum=0, allow_none=True)
        self.seed = check_int("seed", seed)
        self.class_order = _check_class_order(class_order, self.num_classes)
        if self.class_order == "random":
            self._groups = None
            self.num_groups = -(-self.num_classes // self.group_size)
        else:
            groups = self.class_order
            if groups == "cyclic":
                groups = [list(range(s, min(s + self.group_size, self.num_classes)))
                          for s in range(0, self.num_classes, self.group_size)]
            self._groups = np.zeros((len(groups), self.num_classes), "float32")
            for g, members in enumerate(groups):
                self._groups[g, members] = 1.0
            self.num_groups = len(groups)
        self._compiled = {}

    @property
    def profile(self):
        """The profile function `h(phase)`."""
        return self.shape if callable(self.shape) else PROFILES[self.shape]

    def emphasis(self, period_index):
        """0/1 mask of the emphasised classes, shape `period_index.shape + (C,)` (float32)."""
        k = ops.convert_to_tensor(period_index)
        slot = k % self.num_groups
        if self._groups is not None:
            return ops.take(ops.convert_to_tensor(self._groups), slot, axis=0)
        ranks = _random_ranks(self.seed, k // self.num_groups, self.num_classes)
        mask = ops.floor_divide(ranks, self.group_size) == ops.cast(slot, ranks.dtype)[..., None]
        return ops.cast(mask, "float32")

    def __call__(self, step, dtype="float32"):
        """Γ(step), shape `step.shape + (C,)`, of `dtype`.

        Args:
            step: integer step(s) t >= 0, any shape (a tensor inside a compiled step).
            dtype: float dtype of the result.
        """
        t = ops.convert_to_tensor(step)
        if "int" not in str(t.dtype):
            t = ops.cast(t, "int32")
        # Integer arithmetic with the tensors' own operators: keras.ops narrows int64
        # results to int32 on some backends.
        s = t
        if self.start_after is not None:
            s = (t - self.start_after) * ops.cast(t >= self.start_after, t.dtype)
        k = s // self.period
        # The phase in float64 for a float64 Γ (exact to rounding), else float32.
        phase_dtype = "float64" if dtype == "float64" else "float32"
        phase = ops.cast(s - k * self.period, phase_dtype) / self.period
        h = ops.cast(self.profile(phase), dtype)
        amplitude = self.amplitude(t) if callable(self.amplitude) else self.amplitude
        raw = 1.0 + (ops.cast(amplitude, dtype) - 1.0)[..., None] * h[..., None] * ops.cast(
            self.emphasis(k), dtype)
        gamma = self.num_classes * raw / ops.sum(raw, -1, keepdims=True) if self.normalize else raw
        static = None
        if self.start_after is not None:
            static = t < self.start_after
        if self.static_after is not None:
            after = t >= self.static_after
            static = after if static is None else static | after
        return gamma if static is None else ops.where(static[..., None], ops.ones_like(gamma), gamma)

    def weights_at(self, step, dtype="float32"):
        """Γ(step) as a NumPy array: shape (C,) for a scalar step, else `shape + (C,)`."""
        step = np.asarray(step)
        if step.dtype.kind not in "iu" or np.any(step < 0):
            raise invalid("step", "non-negative integer step(s)", step.tolist())
        if dtype not in self._compiled:  # one compiled call, not op-by-op dispatch
            self._compiled[dtype] = backend.get().compile_function(lambda t: self(t, dtype))
        return ops.convert_to_numpy(self._compiled[dtype](
            ops.convert_to_tensor(step, _step_dtype(step))))

    def emphasized_at(self, step):
        """Indices of the classes emphasised at `step` (empty when Γ ≡ 1 there)."""
        step = int(step)
        if (self.static_after is not None and step >= self.static_after) or (
                self.start_after is not None and step < self.start_after):
            return np.zeros((0,), "int64")
        s = step - (self.start_after or 0)
        if not callable(self.amplitude) and self.amplitude == 1:
            return np.zeros((0,), "int64")
        k = ops.convert_to_tensor(s // self.period, _step_dtype(np.asarray(s)))
        return np.flatnonzero(ops.convert_to_numpy(self.emphasis(k)))

    def with_period(self, period):
        """A copy with another period; the profile and amplitude objects are kept as they are
        (a `lambda` profile survives, which `from_config` could not rebuild)."""
        return type(self)(**dict(self._arguments(), period=period))

    def _arguments(self):
        return dict(num_classes=self.num_classes, amplitude=self.amplitude, period=self.period,
                    shape=self.shape, normalize=self.normalize, class_order=self.class_order,
                    group_size=self.group_size, static_after=self.static_after,
                    start_after=self.start_after, seed=self.seed)

    def get_config(self):
        config = self._arguments()
        config["amplitude"] = _serialize(config["amplitude"])
        config["shape"] = _serialize(config["shape"])
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["amplitude"] = _deserialize(config["amplitude"])
        config["shape"] = _deserialize(config["shape"])
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"ClassWeightSchedule({args})"


def _step_dtype(step):
    """int64 where the backend has it and the steps need it, else int32."""
    big = step.size and int(np.max(step)) >= 2**31
    if not big:
        return "int32"
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise invalid("step", "steps < 2**31 (JAX without jax_enable_x64 has no int64)",
                          int(np.max(step)))
    return "int64"
