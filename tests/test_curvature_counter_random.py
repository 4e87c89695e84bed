"""`counter_random`: against a pure-Python SplitMix64, and its distribution."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import counter_random

_M = 2**64


def _mix(z):  # SplitMix64's finaliser in Python integers (the reference)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % _M
    return z ^ (z >> 31)


def _reference_uniform(n, seed):
    s = [v % _M for v in np.atleast_1d(seed).tolist()]
    key = _mix((s[0] * 0x9E3779B97F4A7C15 + s[-1]) % _M)
    return np.array([(_mix((i * 0x9E3779B97F4A7C15 + key) % _M) >> 11) * 2.0**-52 - 1.0 for i in range(n)])


@pytest.mark.parametrize("seed", [0, 7, [3, -5], [-(2**62), 2**62 + 11]])
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_uniform_matches_the_python_reference(seed, mode):
    seed_t = tf.constant(seed, tf.int64)
    fn = {"eager": counter_random.uniform_like, "graph": tf.function(counter_random.uniform_like),
          "xla": tf.function(counter_random.uniform_like, jit_compile=True)}[mode]
    got = fn(tf.zeros([37], tf.float64), seed_t).numpy()
    np.testing.assert_array_equal(got, _reference_uniform(37, seed))


def test_fold_in_matches_the_python_reference():
    key = _mix((3 * 0x9E3779B97F4A7C15 + 4) % _M)
    new = _mix((key + 6 * 0x9E3779B97F4A7C15) % _M)  # stream i = 5
    expected = np.array([new, _mix(new)], dtype=np.uint64).view(np.int64)
    got = counter_random.fold_in(tf.constant([3, 4], tf.int64), 5).numpy()
    np.testing.assert_array_equal(got, expected)


def test_uniform_is_uniform_and_streams_are_uncorrelated():
    n = 2**16
    z = counter_random.uniform_like(tf.zeros([n]), 11).numpy()
    assert z.min() >= -1.0 and z.max() < 1.0
    # Uniform on [-1, 1): mean 0 (sd 1/sqrt(3n)), E z^2 = 1/3 (sd sqrt(4/45 n)).
    assert abs(z.mean()) < 5 / np.sqrt(3 * n)
    assert abs(np.mean(z**2) - 1 / 3) < 5 * np.sqrt(4 / 45 / n)
    counts, _ = np.histogram(z, bins=16, range=(-1, 1))
    chi2 = np.sum((counts - n / 16) ** 2 / (n / 16))
    assert chi2 < 50  # 15 degrees of freedom: P(chi2 > 50) < 1e-5
    bound = 5 / np.sqrt(n)  # correlations of independent vectors
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < bound
    others = [counter_random.uniform_like(tf.zeros([n]), 12).numpy(),
              counter_random.uniform_like(tf.zeros([n]), counter_random.fold_in(tf.constant(11, tf.int64), 0)).numpy(),
              counter_random.uniform_like(tf.zeros([n]), counter_random.fold_in(tf.constant(11, tf.int64), 1)).numpy()]
    for i, a in enumerate([z] + others):
        for b in others[i:]:
            if a is not b:
                assert abs(np.corrcoef(a, b)[0, 1]) < bound


def test_uniform_keeps_the_static_shape_in_graph():
    draw = tf.function(lambda v: counter_random.uniform_like(v, 1))
    assert draw.get_concrete_function(tf.TensorSpec([9], tf.float64)).output_shapes.as_list() == [9]
    assert draw.get_concrete_function(tf.TensorSpec([None], tf.float64)).output_shapes.as_list() == [None]
    np.testing.assert_array_equal(draw(tf.zeros([2, 3])).numpy().ravel(), _reference_uniform(6, 1))
