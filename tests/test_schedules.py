"""ClassWeightSchedule against an independent NumPy re-derivation of Γ(t)."""

import json
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from conftest import numpy_crossentropy, numpy_gamma
from keras_dynloss import ClassWeightSchedule


def test_paper_peak_weights():
    s = ClassWeightSchedule(3, amplitude=70, period=5000)
    np.testing.assert_allclose(s.weights_at(2500), [70 * 3 / 72, 3 / 72, 3 / 72], rtol=1e-6)
    np.testing.assert_allclose(s.weights_at(2500), [2.9166667, 0.0416667, 0.0416667], atol=1e-6)
    np.testing.assert_array_equal(s.weights_at(0), [1, 1, 1])
    # period 1 emphasises class 1, period 3 wraps round to class 0
    assert s.weights_at(7500).argmax() == 1
    assert s.weights_at(17500).argmax() == 0


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(2, 12),
    amplitude=st.floats(1.0, 200.0),
    period=st.integers(1, 10_000),
    step=st.integers(0, 2**62),
    shape=st.sampled_from(["triangular", "sine", "square"]),
    normalize=st.booleans(),
)
def test_matches_numpy(num_classes, amplitude, period, step, shape, normalize):
    s = ClassWeightSchedule(num_classes, amplitude=amplitude, period=period, shape=shape,
                            normalize=normalize)
    got = s.weights_at(step)
    want = numpy_gamma(step, num_classes, amplitude, period, shape, normalize)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    if normalize:
        np.testing.assert_allclose(got.sum(), num_classes, rtol=1e-5)


def test_vectorised_steps_match_scalar():
    s = ClassWeightSchedule(4, amplitude=9, period=7, shape="sine", static_after=50)
    steps = np.arange(60)
    table = s.weights_at(steps)
    assert table.shape == (60, 4)
    for t in (0, 3, 13, 27, 49, 50, 59):
        np.testing.assert_allclose(table[t], numpy_gamma(t, 4, 9, 7, "sine", static_after=50),
                                   rtol=1e-6)
    np.testing.assert_array_equal(table[50:], 1.0)
    assert s.weights_at(steps.reshape(6, 10)).shape == (6, 10, 4)


def test_very_large_steps_are_exact():
    s = ClassWeightSchedule(3, amplitude=70, period=5000)
    big = 3 * 5000 * (2**40) + 2500  # ~1.6e16: beyond float64's exact integers
    np.testing.assert_allclose(s.weights_at(big), [70 * 3 / 72, 3 / 72, 3 / 72], rtol=1e-6)
    np.testing.assert_allclose(s.weights_at(big + 5000), [3 / 72, 70 * 3 / 72, 3 / 72], rtol=1e-6)


def test_inside_tf_function_and_xla():
    s = ClassWeightSchedule(5, amplitude=20, period=11, class_order="random", seed=4)
    plain = tf.function(lambda t: s(t))
    xla = tf.function(lambda t: s(t), jit_compile=True)
    for t in (0, 5, 60, 123_456_789_012):
        want = s.weights_at(t)
        np.testing.assert_allclose(plain(tf.constant(t, tf.int64)).numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(xla(tf.constant(t, tf.int64)).numpy(), want, rtol=1e-6)


_EDIT_AFTER_IMPORT = """
import json, pathlib, sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
import keras_dynloss as kd
assert kd.__file__.startswith(sys.argv[1]), kd.__file__
for path in pathlib.Path(kd.__file__).parent.glob("*.py"):  # a colleague's edit lands
    path.write_text("# edited\\n" * 7 + path.read_text())
s = kd.ClassWeightSchedule(5, amplitude=20, period=11, shape="sine")
traced = tf.function(lambda t: s(t))
step = tf.Variable(0, dtype=tf.int64)
loss = kd.DynamicalLoss(5, amplitude=20, period=11, shape="sine", from_logits=True).bind(step)
traced_loss = tf.function(lambda y, f: loss(y, f))
traced_mse = tf.function(lambda y, f, g: kd.dynamical_mean_squared_error(y, f, g))
y, f = tf.constant(LABELS), tf.constant(LOGITS)
out = {"gamma": [], "loss": [], "mse": []}
for t in STEPS:
    out["gamma"].append(traced(tf.constant(t, tf.int64)).numpy().tolist())
    step.assign(t)
    out["loss"].append(float(traced_loss(y, f)))
    out["mse"].append(traced_mse(y, f, tf.constant(out["gamma"][-1])).numpy().tolist())
print(json.dumps(out))
"""


def test_traced_schedule_and_losses_ignore_sources_edited_after_import(tmp_path):
    """Regression: AutoGraph re-read an edited source file at trace time and traced
    the function found above ``__call__``'s old line (the 0/1 emphasis mask)."""
    package = pathlib.Path(__import__("keras_dynloss").__file__).parent
    shutil.copytree(package, tmp_path / "keras_dynloss",
                    ignore=shutil.ignore_patterns("__pycache__"))
    steps, labels = [0, 5, 27, 60], [0, 1, 2, 3, 4, 2]
    logits = np.random.RandomState(0).randn(len(labels), 5).astype("float32")
    script = tmp_path / "edit_after_import.py"  # a file: AutoGraph skips `-c` code
    script.write_text(_EDIT_AFTER_IMPORT.replace("STEPS", repr(steps))
                      .replace("LABELS", repr(labels)).replace("LOGITS", repr(logits.tolist())))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    gammas = np.array([numpy_gamma(t, 5, 20, 11, "sine") for t in steps])
    np.testing.assert_allclose(got["gamma"], gammas, rtol=1e-6)
    ce = numpy_crossentropy(labels, logits)
    np.testing.assert_allclose(got["loss"], [np.mean(g[labels] * ce) for g in gammas], rtol=1e-5)
    squared = np.mean((np.eye(5)[labels] - logits) ** 2, -1)
    np.testing.assert_allclose(got["mse"], [g[labels] * squared for g in gammas], rtol=1e-5)


def test_amplitude_one_is_exactly_one():
    s = ClassWeightSchedule(7, amplitude=1, period=3)
    np.testing.assert_array_equal(s.weights_at(np.arange(40)), 1.0)


def test_static_after():
    s = ClassWeightSchedule(3, amplitude=70, period=10, static_after=65)
    assert s.weights_at(64).max() > 1.5
    np.testing.assert_array_equal(s.weights_at(65), 1.0)
    np.testing.assert_array_equal(s.weights_at(10**12), 1.0)
    assert s.emphasized_at(65).size == 0


def test_random_order_is_a_seeded_permutation_per_cycle():
    c, period = 6, 4
    s = ClassWeightSchedule(c, amplitude=10, period=period, class_order="random", seed=1)
    peaks = s.weights_at(np.arange(0, 5 * c * period) + period // 2).argmax(-1)[::period]
    cycles = peaks.reshape(5, c)
    for cyc in cycles:
        assert sorted(cyc) == list(range(c))
    assert len({tuple(cyc) for cyc in cycles}) > 1  # fresh permutation each cycle
    same = ClassWeightSchedule(c, amplitude=10, period=period, class_order="random", seed=1)
    other = ClassWeightSchedule(c, amplitude=10, period=period, class_order="random", seed=2)
    steps = np.arange(0, 3 * c * period)
    np.testing.assert_array_equal(same.weights_at(steps), s.weights_at(steps))
    assert not np.array_equal(other.weights_at(steps), s.weights_at(steps))


def test_groups_cyclic_and_explicit():
    s = ClassWeightSchedule(10, amplitude=5, period=2, group_size=4)
    assert s.num_groups == 3
    np.testing.assert_array_equal(s.emphasized_at(1), [0, 1, 2, 3])
    np.testing.assert_array_equal(s.emphasized_at(5), [8, 9])
    np.testing.assert_array_equal(s.emphasized_at(7), [0, 1, 2, 3])
    g = [[0, 2], [1], [3, 4]]
    e = ClassWeightSchedule(5, amplitude=5, period=2, class_order=g)
    for t in range(0, 12):
        np.testing.assert_allclose(e.weights_at(t), numpy_gamma(t, 5, 5, 2, groups=g), rtol=1e-6)
    r = ClassWeightSchedule(10, amplitude=5, period=2, group_size=3, class_order="random")
    seen = np.concatenate([r.emphasized_at(2 * k) for k in range(4)])
    assert sorted(seen) == list(range(10))


def test_custom_profile_and_config_round_trip():
    @keras.saving.register_keras_serializable(package="test_schedules")
    def half(phase):
        return 0.5 * tf.ones_like(phase)

    s = ClassWeightSchedule(3, amplitude=5, period=4, shape=half)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    for t in range(12):  # w = 1 + 4 * 0.5 on class (t // 4) % 3: raw (3, 1, 1) / 5 * 3
        want = np.ones(3)
        want[(t // 4) % 3] = 3
        np.testing.assert_allclose(back.weights_at(t), 3 * want / 5, rtol=1e-6)
    groups = [[0, 1], [3]]
    sched = ClassWeightSchedule(4, amplitude=3, period=9, shape="sine", normalize=False,
                                class_order=groups, static_after=40, seed=3)
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sched))
    got = back.weights_at(np.arange(50), dtype="float64")
    for t in range(50):
        want = numpy_gamma(t, 4, 3, 9, "sine", normalize=False, static_after=40, groups=groups)
        np.testing.assert_allclose(got[t], want, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), r"`num_classes`: expected an integer >= 2\. Received: num_classes=1"),
        (dict(num_classes=3.0), r"`num_classes`.*Received: num_classes=3\.0"),
        (dict(amplitude=0.5), r"`amplitude`: expected a finite number >= 1.*amplitude=0\.5"),
        (dict(amplitude=float("nan")), r"`amplitude`.*amplitude=nan"),
        (dict(amplitude=float("inf")), r"`amplitude`.*amplitude=inf"),
        (dict(amplitude="big"), r"`amplitude`.*amplitude='big'"),
        (dict(period=0), r"`period`: expected an integer >= 1\. Received: period=0"),
        (dict(period=-5), r"`period`.*period=-5"),
        (dict(period=2.5), r"`period`.*period=2\.5"),
        (dict(shape="saw"), r"`shape`: expected one of 'triangular', 'sine', 'square'.*shape='saw'"),
        (dict(class_order="backwards"), r"`class_order`.*class_order='backwards'"),
        (dict(class_order=[0, 3]), r"`class_order`.*class_order=\[0, 3\]"),
        (dict(class_order=[]), r"`class_order`"),
        (dict(group_size=4), r"`group_size`: expected an integer in \[1, 3\].*group_size=4"),
        (dict(static_after=-1), r"`static_after`.*static_after=-1"),
        (dict(normalize="yes"), r"`normalize`: expected True or False"),
        (dict(seed=1.5), r"`seed`.*seed=1\.5"),
    ],
)
def test_rejected_arguments(kwargs, match):
    args = dict(num_classes=3, amplitude=2, period=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ClassWeightSchedule(args.pop("num_classes"), **args)


def test_rejected_steps():
    s = ClassWeightSchedule(3, amplitude=2, period=10)
    with pytest.raises(ValueError, match=r"`step`: expected non-negative integer"):
        s.weights_at(-1)
    with pytest.raises(ValueError, match=r"`step`"):
        s.weights_at(1.5)
    with pytest.raises(ValueError, match=r"`step`.*< 2\*\*63"):
        s.weights_at(2**64 - 1)


@pytest.mark.parametrize("kwargs", [
    dict(num_classes=3, amplitude=70, period=50, static_after=260),
    dict(num_classes=4, amplitude=5, period=7, shape="sine", class_order=[[0, 1], 3, 2]),
    dict(num_classes=5, amplitude=3, period=9, shape="square", group_size=2, normalize=False),
])
def test_lookup_table_equals_formula(kwargs):
    s = ClassWeightSchedule(**kwargs)
    steps = np.arange(3 * s.num_groups * s.period + 11)
    assert s._table(tf.float32) is not None
    np.testing.assert_array_equal(s.weights_at(steps), s.formula(tf.constant(steps)).numpy())
    big = ClassWeightSchedule(3, amplitude=70, period=2**19)  # table too large: formula
    assert big._table(tf.float32) is None
    np.testing.assert_allclose(big.weights_at(2**18), [70 * 3 / 72, 3 / 72, 3 / 72], rtol=1e-6)


@pytest.mark.parametrize("shape", ["triangular", "sine"])
@pytest.mark.parametrize("period", [997, 3_000_017])  # lookup table and formula paths
def test_float64_gamma_is_exact_to_rounding(shape, period):
    s = ClassWeightSchedule(3, amplitude=70, period=period, shape=shape)
    rng = np.random.default_rng(period)
    steps = np.concatenate([rng.integers(0, 3 * period, 40), [period // 3, 2**50 + 7]])
    got = s.weights_at(steps, dtype="float64")
    assert got.dtype == np.float64
    want = np.array([numpy_gamma(t, 3, 70, period, shape) for t in steps])
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-15)
    graph = tf.function(lambda t: s(t, dtype=tf.float64), jit_compile=True)
    np.testing.assert_allclose(graph(tf.constant(steps, tf.int64)).numpy(), want,
                               rtol=1e-15, atol=1e-15)


def test_with_period_keeps_callable_profile_and_leaves_original():
    import functools

    def power_sine(phase, power):
        return tf.sin(np.pi * phase) ** power

    for profile in (lambda phase: tf.sin(np.pi * phase) ** 3,
                    functools.partial(power_sine, power=3)):
        s = ClassWeightSchedule(3, amplitude=9, period=4, shape=profile, class_order=[2, 0, 1])
        longer = s.with_period(10)
        assert longer is not s and longer.shape is profile
        assert (s.period, longer.period) == (4, 10)
        for t in range(40):
            k, r = divmod(t, 10)
            raw = np.ones(3)
            raw[[2, 0, 1][k % 3]] = 1 + 8 * np.sin(np.pi * r / 10) ** 3
            np.testing.assert_allclose(longer.weights_at(t, dtype="float64"), 3 * raw / raw.sum(),
                                       rtol=1e-14)
        np.testing.assert_allclose(s.weights_at(1), numpy_gamma(1, 3, 1 + 8 * 0.5**1.5, 4,
                                                                groups=[[2], [0], [1]], shape="square"),
                                   rtol=1e-6)
    with pytest.raises(ValueError, match=r"`period`.*period=0"):
        s.with_period(0)
