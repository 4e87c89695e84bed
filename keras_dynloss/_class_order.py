"""Which classes each period of a ClassWeightSchedule emphasises.

Period ``k`` emphasises one *group* of classes, given as a 0/1 mask of shape (C,):

* cyclic and explicit orders: a fixed (G, C) table of groups, row ``k mod G``;
* random order: cycle ``m = k // G`` shuffles the classes by sorting integer hash
  keys of ``(seed, m, c)``; the rank ``r_c`` of class c puts it in group
  ``r_c // group_size`` (``G = ceil(C / group_size)``). Plain int64 arithmetic,
  so eager, graph and XLA agree, for any step below 2**63.
"""

import numbers

import numpy as np
import tensorflow as tf

from keras_dynloss._checks import check_choice, invalid

__all__ = []

_PRIME = 2147483647  # 2**31 - 1: products of two residues stay below 2**62


def _mix(x):
    """Integer hash of int64 residues in [0, 2**31 - 1) (no overflow anywhere)."""
    for multiplier, offset, shift in ((48271, 11, 15), (69621, 7, 13), (16807, 3, 16)):
        x = tf.math.floormod(x * multiplier + offset, _PRIME)
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift))
    return x


def _hash_keys(seed, cycle, classes):
    """Pseudo-random int64 sort keys for (seed, cycle, class), broadcast together."""
    key = _mix(tf.math.floormod(tf.constant(seed, tf.int64), _PRIME))
    key = _mix(tf.math.floormod(key + tf.math.floormod(cycle, _PRIME), _PRIME))
    key = _mix(tf.math.floormod(key + tf.math.floordiv(cycle, _PRIME), _PRIME))
    return _mix(tf.math.floormod(key + _mix(classes + 1), _PRIME))


def check_class_order(class_order, num_classes):
    """``"cyclic"``, ``"random"``, or the explicit order as a list of groups
    (lists of ints); raises ValueError naming ``class_order`` otherwise."""
    if isinstance(class_order, str):
        return check_choice("class_order", class_order, ("cyclic", "random"))
    expected = (
        f"'cyclic', 'random', or a non-empty sequence of class indices in "
        f"[0, {num_classes}) or of non-empty groups of them"
    )
    if not isinstance(class_order, (list, tuple)) or not class_order:
        raise invalid("class_order", expected, class_order)
    groups = []
    for item in class_order:
        group = [item] if isinstance(item, numbers.Integral) else item
        if not isinstance(group, (list, tuple)) or not group:
            raise invalid("class_order", expected, class_order)
        for c in group:
            if (
                isinstance(c, bool)
                or not isinstance(c, numbers.Integral)
                or not 0 <= c < num_classes
            ):
                raise invalid("class_order", expected, class_order)
        groups.append([int(c) for c in group])
    return groups


def groups_table(class_order, num_classes, group_size):
    """(G, C) float32 0/1 table of the groups of a checked cyclic or explicit
    order (consecutive classes for cyclic); None for ``"random"``."""
    if class_order == "random":
        return None
    if class_order == "cyclic":
        groups = [
            list(range(s, min(s + group_size, num_classes)))
            for s in range(0, num_classes, group_size)
        ]
    else:
        groups = class_order
    table = np.zeros((len(groups), num_classes), np.float32)
    for g, members in enumerate(groups):
        table[g, members] = 1.0
    return table


def random_emphasis(period_index, seed, num_classes, group_size):
    """0/1 float32 mask of the classes the random order emphasises in period
    ``k``, shape ``k.shape + (C,)``.

    Args:
        period_index: int64 tensor ``k = t // T`` of any shape.
        seed, num_classes, group_size: the schedule's.
    """
    num_groups = -(-num_classes // group_size)
    slot = tf.math.floormod(period_index, num_groups)
    cycle = tf.math.floordiv(period_index, num_groups)
    classes = tf.range(num_classes, dtype=tf.int64)
    keys = _hash_keys(seed, cycle[..., None], classes)
    ranks = tf.argsort(tf.argsort(keys, stable=True), stable=True)
    return tf.cast(
        tf.equal(ranks // group_size, tf.cast(slot, tf.int32)[..., None]), tf.float32
    )
