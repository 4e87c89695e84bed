"""Curvature products across the replicas of a `tf.distribute.MirroredStrategy`.

Under a one-machine `MirroredStrategy` with `R > 1` replicas, each Hessian (or
Gauss-Newton) product of the probe runs on every replica's device on its shard
of the probe batch (`N_r` rows, contiguous, sizes differing by at most one) and
the shards are summed across devices:

    A v = sum_r N_r A_r v / N,

`A_r` the operator of shard `r`'s mean loss. For a loss that is a mean over
samples (Keras's default `sum_over_batch_size`, sample weights included) this
is exactly the operator of the whole batch; added losses (regularisers) enter
each shard whole and sum to weight 1. With `training=True`, BatchNormalization
uses per-shard statistics, as it does when training under the strategy. The
Lanczos loop itself runs once, in cross-replica context. NTK products are
sharded the same way (`ntk.ntk_linearized_fn(devices=...)`): `J^T u = sum_r
J_r^T u_r` (each replica's VJP on its rows, summed), then `J w` row block `r`
on replica `r` (concatenated). Multi-worker strategies are not sharded: the
probe computes locally there (see `CurvatureProbe`).
"""

import contextlib

import tensorflow as tf

from keras_dynloss import _checks as val


def _strategy(model):
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return strategy
    return None


def sharded_products(model):
    """A `ShardedProducts` when `model` lives under a multi-replica
    `MirroredStrategy`, else `None`."""
    strategy = _strategy(model)
    return None if strategy is None else ShardedProducts(strategy)


def shard_bounds(n, replicas, r):
    """Rows `[start, start + size)` of shard `r` of `n` (contiguous, sizes
    differing by at most one): int32 tensors."""
    base, extra = n // replicas, n % replicas
    return r * base + tf.minimum(r, extra), base + tf.cast(r < extra, tf.int32)


def take_rows(t, start, size):
    """Rows `[start, start + size)` of every tensor of the structure `t` (or `None`)."""
    return None if t is None else tf.nest.map_structure(lambda a: a[start:start + size], t)


def on_device(device):
    """`tf.device(device)`, or no placement for `None`."""
    return contextlib.nullcontext() if device is None else tf.device(device)


def on_shards(devices, x, fn):
    """`[fn(start, size) placed on devices[r] for each shard r of x's rows]`;
    `devices=None`: `[fn(0, N)]`, one shard of all rows, unplaced."""
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    devices = devices or [None]
    parts = []
    for r, device in enumerate(devices):
        with on_device(device):
            parts.append(fn(*shard_bounds(n, len(devices), r)))
    return parts


class ShardedProducts:
    """Builds device-sharded matvecs for a `MirroredStrategy` (see module).

    The products are placed explicitly on the strategy's devices
    (`strategy.extended.worker_devices`) from the probe's cross-replica
    function rather than through `strategy.run`: inside a replica context
    Keras divides mean losses by the number of replicas, which would silently
    scale the operator.
    """

    def __init__(self, strategy):
        self.strategy = strategy
        self.devices = list(strategy.extended.worker_devices)
        self.replicas = len(self.devices)

    def matvec(self, flat, linearized, x, y, sw):
        """`v -> A v` (float64) from `linearized(theta, x, y, sw) -> matvec`
        (`hessian.linearized_curvature_fn`), each shard's first pass recorded
        once, on its device."""
        replicas = self.replicas
        static = tf.nest.flatten(x)[0].shape[0]
        if static is not None and static < replicas:
            raise val.invalid("data", f"a probe batch of at least {replicas} samples (one per replica)",
                              f"<batch of {static}>")
        theta = flat.read()
        n = tf.shape(tf.nest.flatten(x)[0])[0]
        shards = on_shards(self.devices, x, lambda start, size: (size, linearized(
            theta, take_rows(x, start, size), take_rows(y, start, size), take_rows(sw, start, size))))

        def mv(v):
            parts = []
            for device, (size, matvec) in zip(self.devices, shards):
                with tf.device(device):
                    parts.append(tf.cast(matvec(tf.cast(v, flat.dtype)), tf.float64) * tf.cast(size, tf.float64))
            return tf.add_n(parts) / tf.cast(n, tf.float64)

        return mv
