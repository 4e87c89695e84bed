"""ClassWeightSchedule against an independent NumPy re-derivation of Γ(t)."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from keras import ops

from conftest import BACKEND, numpy_gamma
from keras_dynloss import ClassWeightSchedule, backend

pytestmark = pytest.mark.multi_backend
MAX_STEP = 2**31 - 1 if BACKEND == "jax" else 2**62


def test_paper_peak_weights():
    s = ClassWeightSchedule(3, amplitude=70, period=5000)
    np.testing.assert_allclose(s.weights_at(2500), [70 * 3 / 72, 3 / 72, 3 / 72], rtol=1e-6)
    np.testing.assert_array_equal(s.weights_at(0), [1, 1, 1])
    assert s.weights_at(7500).argmax() == 1 and s.weights_at(17500).argmax() == 0


@settings(max_examples=40, deadline=None)
@given(num_classes=st.integers(2, 12), amplitude=st.floats(1.0, 200.0),
       period=st.integers(1, 10_000), step=st.integers(0, MAX_STEP),
       shape=st.sampled_from(["triangular", "sine", "square"]), normalize=st.booleans())
def test_matches_numpy(num_classes, amplitude, period, step, shape, normalize):
    s = ClassWeightSchedule(num_classes, amplitude=amplitude, period=period, shape=shape,
                            normalize=normalize)
    want = numpy_gamma(step, num_classes, amplitude, period, shape, normalize)
    np.testing.assert_allclose(s.weights_at(step), want, rtol=2e-5, atol=1e-6)


def test_steps_of_any_shape_static_after_and_start_after():
    s = ClassWeightSchedule(4, amplitude=9, period=7, shape="sine", static_after=50,
                            start_after=10)
    table = s.weights_at(np.arange(60))
    assert table.shape == (60, 4) and s.weights_at(np.arange(60).reshape(6, 10)).shape == (6, 10, 4)
    for t in range(60):
        want = numpy_gamma(t, 4, 9, 7, "sine", static_after=50, start_after=10)
        np.testing.assert_allclose(table[t], want, rtol=1e-6)
    np.testing.assert_array_equal(table[:10], 1.0)
    np.testing.assert_array_equal(table[50:], 1.0)
    assert table[13].max() > 2  # the first period starts at step 10
    assert list(s.emphasized_at(9)) == [] and list(s.emphasized_at(13)) == [0]


def test_large_steps():
    s = ClassWeightSchedule(3, amplitude=70, period=5000)
    big = 3 * 5000 * (2**40) + 2500 if BACKEND != "jax" else 3 * 5000 * 140_000 + 2500
    np.testing.assert_allclose(s.weights_at(big), [70 * 3 / 72, 3 / 72, 3 / 72], rtol=1e-6)
    np.testing.assert_allclose(s.weights_at(big + 5000), [3 / 72, 70 * 3 / 72, 3 / 72], rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_inside_a_compiled_function(jit_compile):
    s = ClassWeightSchedule(5, amplitude=20, period=11, class_order="random", seed=4,
                            start_after=3)
    compiled = backend.get().compile_function(lambda t: s(t), jit_compile=jit_compile)
    for t in (0, 5, 60, 2_000_000_000):
        got = ops.convert_to_numpy(compiled(ops.convert_to_tensor(t, "int32")))
        np.testing.assert_allclose(got, s.weights_at(t), rtol=1e-6)


# keras.ops.sin computes in float32 under JAX whatever its input (Keras's type promotion).
@pytest.mark.parametrize("shape", ["triangular"] + (["sine"] if BACKEND != "jax" else []))
def test_float64_gamma_is_exact_to_rounding(float64, shape):
    s = ClassWeightSchedule(3, amplitude=70, period=4999, shape=shape)
    for t in (1, 1234, 4998, 7000):
        np.testing.assert_allclose(s.weights_at(t, dtype="float64"),
                                   numpy_gamma(t, 3, 70, 4999, shape), rtol=1e-14)


def test_amplitude_schedule_decays_to_one():
    decay = keras.optimizers.schedules.PolynomialDecay(50.0, 200, end_learning_rate=1.0)
    s = ClassWeightSchedule(3, amplitude=decay, period=10)
    for t in (5, 15, 105, 199, 205, 305):
        a = 1.0 + 49.0 * (1 - min(t, 200) / 200)
        np.testing.assert_allclose(s.weights_at(t), numpy_gamma(t, 3, a, 10), rtol=1e-5)
    np.testing.assert_allclose(s.weights_at(np.arange(200, 260)), 1.0, rtol=1e-6)
    back = ClassWeightSchedule.from_config(s.get_config())
    assert isinstance(back.amplitude, keras.optimizers.schedules.PolynomialDecay)
    np.testing.assert_allclose(back.weights_at(np.arange(0, 250, 7)),
                               s.weights_at(np.arange(0, 250, 7)), rtol=1e-7)
    with pytest.raises(ValueError, match=r"`amplitude`: expected a schedule whose values are >= 1"):
        ClassWeightSchedule(3, amplitude=lambda t: 0.5 + 0 * t, period=10)


def test_random_order_is_a_seeded_permutation_per_cycle():
    s = ClassWeightSchedule(5, amplitude=9, period=3, class_order="random", seed=11)
    peaks = s.weights_at(np.arange(1, 3 * 5 * 400, 3)).argmax(-1).reshape(400, 5)
    assert all(sorted(cycle) == list(range(5)) for cycle in peaks)
    counts = np.bincount(peaks[:, 0], minlength=5)  # the first class of a cycle is uniform
    assert counts.min() > 50 and counts.max() < 110
    assert len({tuple(c) for c in peaks}) > 60  # many different permutations
    other = ClassWeightSchedule(5, amplitude=9, period=3, class_order="random", seed=12)
    assert not np.array_equal(other.weights_at(np.arange(1, 150, 3)),
                              s.weights_at(np.arange(1, 150, 3)))


def test_random_order_with_groups():
    s = ClassWeightSchedule(7, amplitude=9, period=2, class_order="random", group_size=3, seed=2)
    masks = s.weights_at(np.arange(1, 2 * 3 * 50, 2)).round(5)
    emphasised = (masks > masks.min(-1, keepdims=True)).reshape(50, 3, 7)
    assert np.all(emphasised.sum(1) == 1)  # every class once per cycle of G = 3 periods
    assert sorted(emphasised.sum(2)[0]) == [1, 3, 3]


def test_cyclic_groups_and_explicit_order():
    s = ClassWeightSchedule(5, amplitude=4, period=2, group_size=2)
    groups = [[0, 1], [2, 3], [4]]
    for t in range(20):
        np.testing.assert_allclose(s.weights_at(t), numpy_gamma(t, 5, 4, 2, groups=groups),
                                   rtol=1e-6)
    order = [[2], [0, 4], 1]
    s = ClassWeightSchedule(5, amplitude=4, period=2, class_order=order)
    for t in range(20):
        np.testing.assert_allclose(s.weights_at(t),
                                   numpy_gamma(t, 5, 4, 2, groups=[[2], [0, 4], [1]]), rtol=1e-6)


def _power_sine(phase, power):
    return ops.sin(np.pi * phase) ** power


def test_custom_profile_with_period_and_config():
    shape = functools.partial(_power_sine, power=2)
    s = ClassWeightSchedule(3, amplitude=8, period=10, shape=shape)
    for t in (2, 5, 17):
        raw = np.ones(3)
        raw[(t // 10) % 3] = 1 + 7 * np.sin(np.pi * (t % 10) / 10) ** 2
        np.testing.assert_allclose(s.weights_at(t), 3 * raw / raw.sum(), rtol=1e-6)
    longer = s.with_period(20)
    assert longer.shape is shape and longer.period == 20 and s.period == 10
    back = ClassWeightSchedule.from_config(ClassWeightSchedule(3, amplitude=8, period=10,
                                                               shape="sine").get_config())
    np.testing.assert_allclose(back.weights_at(np.arange(30)),
                               [numpy_gamma(t, 3, 8, 10, "sine") for t in range(30)], rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), r"`num_classes`: expected an integer >= 2. Received: num_classes=1"),
    (dict(amplitude=0.5), r"`amplitude`: expected a finite number >= 1"),
    (dict(period=0), r"`period`: expected an integer >= 1"),
    (dict(shape="saw"), r"`shape`: expected one of"),
    (dict(class_order=[0, 5]), r"`class_order`"),
    (dict(class_order="sorted"), r"`class_order`"),
    (dict(group_size=4), r"`group_size`: expected an integer in \[1, 3\]"),
    (dict(static_after=-1), r"`static_after`"),
    (dict(start_after=1.5), r"`start_after`"),
    (dict(normalize=1), r"`normalize`: expected True or False"),
])
def test_rejected_arguments(kwargs, match):
    args = dict(num_classes=3, amplitude=5, period=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ClassWeightSchedule(args.pop("num_classes"), **args)


def test_rejected_steps():
    s = ClassWeightSchedule(3, amplitude=5, period=10)
    for bad in (-1, 1.5, [0, -3]):
        with pytest.raises(ValueError, match=r"`step`: expected non-negative integer step"):
            s.weights_at(bad)
