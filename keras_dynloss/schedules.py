"""Class-weight schedules Γ(t): pure functions of the optimizer step, on `keras.ops`:
which classes a period emphasises, a profile `h` of the phase in it, and a normalisation."""

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

# -- the random class order: an integer hash of (seed, cycle, class) modulo the prime
# P = 2**31 - 1 (Schrage's method: no intermediate leaves int32, so every backend agrees).
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


def _group_masks(class_order, num_classes, group_size):
    """The checked `class_order` and its (G, C) 0/1 group masks (None for "random")."""
    if class_order == "random":
        return class_order, None
    if class_order == "cyclic":
        groups = [range(s, s + group_size) for s in range(0, num_classes, group_size)]
    else:
        items = class_order if isinstance(class_order, (list, tuple)) else []
        groups = [list(i) if isinstance(i, (list, tuple)) else [i] for i in items]
        if not (groups and all(groups) and all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool)
                and 0 <= c < num_classes for group in groups for c in group)):
            raise invalid("class_order", f"'cyclic', 'random', or a non-empty sequence of class "
                          f"indices in [0, {num_classes}) or of non-empty groups of them",
                          class_order)
        class_order = groups = [[int(c) for c in group] for group in groups]
    return class_order, np.array([np.isin(range(num_classes), g) for g in groups], "float32")


_ARGUMENTS = ("num_classes", "amplitude", "period", "shape", "normalize", "class_order",
              "group_size", "static_after", "start_after", "seed")


@keras.saving.register_keras_serializable(package="keras_dynloss")
class ClassWeightSchedule:
    """Γ(t): the per-class weights of a dynamical loss at optimizer step `t`.

    `Γ_i(t) = C · w_i(t) / Σ_j w_j(t)` (or `w_i(t)` with `normalize=False`), where
    `w_i(t) = 1 + (A(t) - 1) · h((s mod T) / T) · m_i(s // T)` with `s = t - start_after`,
    `h` the profile and `m(k)` the 0/1 mask of the classes period `k` emphasises.

    Args:
        num_classes: C (>= 2).
        amplitude: A >= 1, the emphasised raw weight's ratio to the others at the peak (A = 1
            is the plain loss), or a schedule `A(t)` >= 1 such as a `LearningRateSchedule`.
        period: T, steps per period (>= 1).
        shape: "triangular" (the paper's), "sine", "square", or a `keras.ops` callable
            `h(phase in [0, 1)) -> [0, 1]` (register it to save it).
        normalize: rescale so that `Σ_i Γ_i = C`.
        class_order: "cyclic" (period k emphasises group `k mod G`), "random" (a seeded
            permutation every cycle of G periods), or a sequence of classes or groups.
        group_size: classes emphasised together per period; `G = ceil(C / group_size)`.
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
        amplitude, shape = (keras.saving.deserialize_keras_object(v) if isinstance(v, dict)
                            else v for v in (amplitude, shape))
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
        self.shape = shape if callable(shape) else check_choice("shape", shape, tuple(PROFILES))
        self.normalize = check_bool("normalize", normalize)
        self.group_size = check_int("group_size", group_size, minimum=1, maximum=num_classes)
        self.static_after = check_int("static_after", static_after, minimum=0, allow_none=True)
        self.start_after = check_int("start_after", start_after, minimum=0, allow_none=True)
        self.seed = check_int("seed", seed)
        self.class_order, self._groups = _group_masks(class_order, self.num_classes,
                                                      self.group_size)
        self.num_groups = (-(-self.num_classes // self.group_size) if self._groups is None
                           else len(self._groups))
        self._compiled = {}

    @property
    def constant(self):
        """True when Γ ≡ 1 at every step (A = 1, or `static_after=0`)."""
        return (not callable(self.amplitude) and self.amplitude == 1) or self.static_after == 0

    def emphasis(self, period_index):
        """0/1 float32 mask of the emphasised classes, shape `period_index.shape + (C,)`."""
        k = ops.convert_to_tensor(period_index)
        slot = k % self.num_groups
        if self._groups is not None:
            return ops.take(ops.convert_to_tensor(self._groups), slot, axis=0)
        ranks = _random_ranks(self.seed, k // self.num_groups, self.num_classes)
        mask = ops.floor_divide(ranks, self.group_size) == ops.cast(slot, ranks.dtype)[..., None]
        return ops.cast(mask, "float32")

    def __call__(self, step, dtype="float32"):
        """Γ(step), shape `step.shape + (C,)`, for integer steps t >= 0 (a tensor when traced)."""
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
        phase = ops.cast(s - k * self.period, "float64" if dtype == "float64" else "float32")
        profile = self.shape if callable(self.shape) else PROFILES[self.shape]
        h = ops.cast(profile(phase / self.period), dtype)
        amplitude = self.amplitude(t) if callable(self.amplitude) else self.amplitude
        raw = 1.0 + (ops.cast(amplitude, dtype) - 1.0)[..., None] * h[..., None] * ops.cast(
            self.emphasis(k), dtype)
        gamma = self.num_classes * raw / ops.sum(raw, -1, keepdims=True) if self.normalize else raw
        static = [t < self.start_after] if self.start_after is not None else []
        static += [t >= self.static_after] if self.static_after is not None else []
        for mask in static:  # no `where` at all without a static phase
            gamma = ops.where(mask[..., None], ops.ones_like(gamma), gamma)
        return gamma

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
        s = int(step) - (self.start_after or 0)
        if s < 0 or self.constant or (self.static_after is not None
                                      and int(step) >= self.static_after):
            return np.zeros((0,), "int64")
        k = ops.convert_to_tensor(s // self.period, _step_dtype(np.asarray(s)))
        return np.flatnonzero(ops.convert_to_numpy(self.emphasis(k)))

    def with_period(self, period):
        """A copy with another period, sharing the profile and amplitude (even a `lambda`)."""
        return type(self)(**dict(self._arguments(), period=period))

    def _arguments(self):
        return {name: getattr(self, name) for name in _ARGUMENTS}

    def get_config(self):
        return {key: keras.saving.serialize_keras_object(value) if callable(value) else value
                for key, value in self._arguments().items()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"ClassWeightSchedule({args})"


def _step_dtype(step):
    """int64 where the steps need it (an error under JAX without jax_enable_x64), else int32."""
    if not (step.size and int(np.max(step)) >= 2**31):
        return "int32"
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            raise invalid("step", "steps < 2**31 (JAX without jax_enable_x64 has no int64)",
                          int(np.max(step)))
    return "int64"
