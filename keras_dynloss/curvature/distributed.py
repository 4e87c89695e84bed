"""Curvature products across the replicas of a one-machine `tf.distribute.MirroredStrategy`.

Each replica records a contiguous shard of the batch (`A v = sum_r N_r A_r v / N`), placed
with `tf.device` from cross-replica context (`strategy.run` would divide mean losses)."""

import tensorflow as tf

from keras_dynloss import _checks
from keras_dynloss import backend
from keras_dynloss.curvature import products


def replica_devices(model):
    """The devices of `model`'s `MirroredStrategy` when it has several replicas, else None."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return list(strategy.extended.worker_devices)
    return None


def _shards(x, devices):
    """`(N, [(start, stop)])`: contiguous shards of x's rows, one per device."""
    rows = tf.nest.flatten(x)[0]
    if rows.shape[0] is not None and rows.shape[0] < len(devices):
        raise _checks.invalid("data", f"batches of at least {len(devices)} samples (one a replica)",
                              f"<batch of {rows.shape[0]}>")
    n, r = tf.shape(rows)[0], len(devices)
    base, extra = n // r, n % r
    starts = [i * base + tf.minimum(i, extra) for i in range(r + 1)]
    return n, list(zip(starts[:-1], starts[1:]))


def _take(tree, start, stop):
    return None if tree is None else tf.nest.map_structure(lambda a: a[start:stop], tree)


def sharded_curvature_fn(fn, devices):
    """`fn` (from `products.curvature_fn`) with each shard recorded on its device."""
    def sharded(theta, non_trainable, x, y, sample_weight=None):
        n, bounds = _shards(x, devices)
        parts = []
        for device, (start, stop) in zip(devices, bounds):
            with tf.device(device):
                weight = tf.cast(stop - start, theta.dtype) / tf.cast(n, theta.dtype)
                batch = [_take(t, start, stop) for t in (x, y, sample_weight)]
                parts.append((device, weight, fn(theta, non_trainable, *batch)))

        def matvec(v):
            terms = []
            for device, weight, lin in parts:
                with tf.device(device):
                    terms.append(weight * lin(v))
            return tf.add_n(terms)

        return matvec

    return sharded


def sharded_ntk_fn(flat, devices, *, trace_outputs=True, training=False):
    """`products.ntk_fn` with each shard's forward pass recorded on its device."""
    def sharded(theta, non_trainable, x, y=None, sample_weight=None):
        _, bounds = _shards(x, devices)
        pieces = []
        for device, (start, stop) in zip(devices, bounds):
            x_r = _take(x, start, stop)
            with tf.device(device):
                out, jvp, vjp = backend.get().linearize(
                    lambda b: flat.outputs(theta, non_trainable, x_r, block=b, training=training),
                    flat.select(theta))
            pieces.append((start, stop, jvp, vjp, lambda device=device: tf.device(device)))
        return products.ntk_pieces_matvec(pieces, out.shape[1], trace_outputs)

    return sharded
