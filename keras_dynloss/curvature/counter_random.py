"""Counter-based random vectors for Lanczos starts: a few integer operations.

`uniform_like(x, seed)` hashes each index of `x` with the seed by SplitMix64's finaliser
(Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014; Java's `SplittableRandom`) and maps the top 53 bits to
`[-1, 1)`: entries independent and uniform, `E[z z^T] = I / 3`. A Lanczos
start or restart only needs a vector with a component along every
eigenvector, which such a vector has with probability 1.

Why not `tf.random.stateless_normal`: its Philox kernel costs ~0.3 s of XLA
compile time on a CPU per call site, and a probe compiled into a training
step (`InStepProbe`) pays that once per site; this hash compiles in ~0.1 s
(`bench/curvature_fig4_in_step.py`).
"""

import tensorflow as tf

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _u64(value):
    return tf.constant(value, tf.uint64)


def _mix(z):
    """SplitMix64's finaliser on uint64 tensors (wrapping arithmetic)."""
    shift = tf.bitwise.right_shift
    z = tf.bitwise.bitwise_xor(z, shift(z, _u64(30))) * _u64(_MIX1)
    z = tf.bitwise.bitwise_xor(z, shift(z, _u64(27))) * _u64(_MIX2)
    return tf.bitwise.bitwise_xor(z, shift(z, _u64(31)))


def _key(seed):
    """An int seed, or int tensor of shape `()` / `(1,)` / `(2,)` -> one uint64 key."""
    seed = tf.reshape(tf.cast(seed, tf.int64), [-1])
    seed = tf.bitcast(seed, tf.uint64)
    return _mix(seed[0] * _u64(_GOLDEN) + seed[-1])


@tf.autograph.experimental.do_not_convert
def fold_in(seed, i):
    """A new seed `(2,)` int64 for stream `i` (int or int tensor) of `seed`."""
    i = tf.bitcast(tf.cast(i, tf.int64), tf.uint64)
    key = _mix(_key(seed) + (i + _u64(1)) * _u64(_GOLDEN))
    return tf.bitcast(tf.stack([key, _mix(key)]), tf.int64)


@tf.autograph.experimental.do_not_convert
def uniform_like(x, seed):
    """float64 of `x`'s shape (static where `x`'s is), entries uniform on
    `[-1, 1)`, a function of `(seed, flat index)`."""
    index = tf.bitcast(tf.range(tf.size(x, out_type=tf.int64), dtype=tf.int64), tf.uint64)
    z = _mix(index * _u64(_GOLDEN) + _key(seed))
    value = tf.cast(tf.bitwise.right_shift(z, _u64(11)), tf.float64) * 2.0**-52 - 1.0
    return tf.reshape(value, tf.shape(x))
