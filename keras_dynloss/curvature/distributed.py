"""Curvature products across the replicas of a `tf.distribute.MirroredStrategy`."""


def sharded_products(model, loss, operator, mode, training):
    """`None` unless the model lives under a multi-replica MirroredStrategy."""
    return None
