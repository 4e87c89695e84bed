"""A Keras model's outputs and loss as pure functions of one flat parameter vector `theta`, by
`model.stateless_call`: they run in any graph or eagerly and never change the model.

Example:
    >>> flat = FlatParameters(model, variables=[model.layers[-1]])
    >>> theta, state = flat.read(), flat.non_trainable()
    >>> value = flat.loss(keras.losses.MeanSquaredError(), theta, state, x, y)
"""

import keras
import numpy as np
from keras import ops

from keras_dynloss import _checks, _compat


def _chosen(model, variables):
    """Indices into `model.trainable_variables` of the variables/layers in `variables`."""
    every = {id(v): i for i, v in enumerate(model.trainable_variables)}
    if variables is None:
        return list(range(len(every)))
    expected = "trainable variables and/or layers (with trainable variables) of the model"
    chosen = set()
    for item in variables if isinstance(variables, (list, tuple)) else [variables]:
        found = item.trainable_variables if isinstance(item, keras.layers.Layer) else [item]
        if not found or any(id(v) not in every for v in found):
            raise _checks.invalid("variables", expected, getattr(item, "name", item))
        chosen.update(every[id(v)] for v in found)
    if not chosen:
        raise _checks.invalid("variables", expected, variables)
    return sorted(chosen)


class FlatParameters:
    """The flat vector `theta` (n,) of a model's trainable variables, in
    `model.trainable_variables` order, each flattened row-major, and a block (m,) of it: the
    variables an operator acts on, the others held fixed (a diagonal block).

    Args:
        model: a built `keras.Model`.
        variables: None (every trainable variable) or a list of trainable variables and/or
            layers of `model` (a layer stands for its trainable variables): the block.

    Attributes:
        size: m, the block's length (the operator's size).
        num_parameters: n, the length of `theta`.
        dtype: the dtype of `theta`, the widest of the trainable variables' (mixed: float32).
    """

    def __init__(self, model, variables=None):
        if not isinstance(model, keras.Model) or not model.built or not model.trainable_variables:
            raise _checks.invalid("model", "a built keras.Model with trainable variables", model)
        self.model = model
        every = model.trainable_variables
        self.shapes = [tuple(v.shape) for v in every]
        self.dtypes = [keras.backend.standardize_dtype(v.dtype) for v in every]
        if not all("float" in d for d in self.dtypes):
            raise _checks.invalid("model", "floating-point trainable variables", model)
        self.dtype = max(self.dtypes, key=lambda d: int(d[-2:]))
        self._offsets = np.cumsum([0] + [int(np.prod(s)) for s in self.shapes]).tolist()
        self.chosen = _chosen(model, variables)
        self.num_parameters = self._offsets[-1]
        self.size = sum(self._offsets[i + 1] - self._offsets[i] for i in self.chosen)
        self._mixed = [(layer, layer.dtype_policy) for layer in _compat.iter_layers(model)
                       if layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype]

    @property
    def variables(self):
        """The chosen variables, in `model.trainable_variables` order."""
        return [self.model.trainable_variables[i] for i in self.chosen]

    def read(self):
        """The current `theta` (n,) (eager use: a traced function takes it as an argument)."""
        return self.flatten(self.model.trainable_variables)

    def non_trainable(self):
        """The current values of `model.non_trainable_variables` (a list)."""
        return [ops.convert_to_tensor(v) for v in self.model.non_trainable_variables]

    def flatten(self, values):
        """`theta` (n,) from the values of every trainable variable (e.g. a train step's)."""
        return ops.concatenate([ops.reshape(ops.cast(v, self.dtype), (-1,)) for v in values])

    def select(self, theta):
        """The block (m,) of `theta` (n,)."""
        if len(self.chosen) == len(self.shapes):
            return theta
        return ops.concatenate([theta[self._offsets[i]:self._offsets[i + 1]] for i in self.chosen])

    def embed(self, block):
        """`block` (m,) at the chosen entries of a zero (n,): `A_bb v = select(A embed(v))`."""
        return self.flatten(self.values(ops.zeros((self.num_parameters,), block.dtype), block))

    def values(self, theta, block=None):
        """The trainable values of `theta`, the chosen ones from `block` (m,) when given."""
        pieces = [theta[a:b] for a, b in zip(self._offsets[:-1], self._offsets[1:])]
        if block is not None:
            start = 0
            for i in self.chosen:
                stop = start + self._offsets[i + 1] - self._offsets[i]
                pieces[i], start = block[start:stop], stop
        return [ops.cast(ops.reshape(p, s), d) for p, s, d in zip(pieces, self.shapes, self.dtypes)]

    def forward(self, theta, non_trainable, x, *, block=None, training=False,
                return_losses=False):
        """The outputs on `x` at `theta` (and `block`) [, the added losses in `dtype`]."""
        takes_training = "training" in self.model.call_signature_parameters
        kwargs = {"training": training} if takes_training else {}
        for layer, policy in self._mixed:
            layer.dtype_policy = policy.variable_dtype
        try:
            result = self.model.stateless_call(self.values(theta, block), list(non_trainable), x,
                                               return_losses=return_losses, **kwargs)
        finally:
            for layer, policy in self._mixed:
                layer.dtype_policy = policy
        if not return_losses:
            return result[0]
        return result[0], [ops.cast(item, self.dtype) for item in result[2]]

    def outputs(self, theta, non_trainable, x, *, block=None, training=False):
        """The outputs as one (N, K) matrix (`as_matrix`)."""
        return as_matrix(self.forward(theta, non_trainable, x, block=block, training=training))[0]

    def num_outputs(self, x):
        """K, the width of `outputs` on inputs shaped like `x` (shape inference, no run)."""
        spec = keras.tree.map_structure(lambda a: keras.KerasTensor((1, *a.shape[1:]), a.dtype), x)
        out = self.model.compute_output_spec(spec)
        return sum(int(np.prod(o.shape[1:])) for o in keras.tree.flatten(out))

    def loss(self, loss, theta, non_trainable, x, y, sample_weight=None, *, block=None,
             training=False, include_regularization=True):
        """The scalar `L = loss(y, model(x), sample_weight) [+ the model's added losses]`."""
        outputs, added = self.forward(theta, non_trainable, x, block=block, training=training,
                                      return_losses=True)
        value = loss_value(loss, y, outputs, sample_weight, self.dtype)
        return value + sum(added) if include_regularization and added else value


def loss_value(loss, y, outputs, sample_weight, dtype):
    """`loss(y, outputs[, sample_weight])` as a scalar of `dtype` (a non-scalar is averaged)."""
    kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
    value = loss(y, outputs, **kwargs)
    return ops.cast(ops.mean(value) if len(value.shape) else value, dtype)


def as_matrix(outputs):
    """`(matrix, restore)`: the outputs as one (N, K) matrix (several outputs side by side,
    each flattened row-major), and `restore(matrix)`, its inverse."""
    parts = keras.tree.flatten(outputs)
    shapes = [tuple(p.shape[1:]) for p in parts]
    widths = [int(np.prod(s)) for s in shapes]
    matrix = ops.concatenate([ops.reshape(p, (-1, w)) for p, w in zip(parts, widths)], axis=1)

    def restore(matrix):
        cuts = np.cumsum(widths)[:-1].tolist()
        pieces = ops.split(matrix, cuts, axis=1) if cuts else [matrix]
        pieces = [ops.reshape(p, (-1, *s)) for p, s in zip(pieces, shapes)]
        return keras.tree.pack_sequence_as(outputs, pieces)

    return matrix, restore
