"""Hessian, Gauss-Newton and NTK products of a Keras model, written once for every backend.

A builder returns a pure function `(theta, non_trainable, x, y, sample_weight) -> matvec`
(`theta`, `non_trainable` as in `flat`): the call records the forward pass once, and each
product `v -> A v` on the block (m,) runs backward passes only (the curvature guide).

Example:
    >>> flat = FlatParameters(model)
    >>> hvp = curvature_fn(flat, loss)(flat.read(), flat.non_trainable(), x, y, None)
    >>> hvp(v)          # (m,), in flat.dtype
"""

import contextlib

import keras
from keras import ops

from keras_dynloss import _checks, backend
from keras_dynloss.curvature.flat import as_matrix, loss_value

OPERATORS = ("hessian", "gauss_newton")


def _rows(tree, start, size):
    """Rows `[start, start + size)` of every tensor in `tree` (None stays None)."""
    def take(a):
        return ops.slice(a, [start] + [0] * (len(a.shape) - 1), [size, *a.shape[1:]])
    return None if tree is None else keras.tree.map_structure(take, tree)


def sub_batches(x, size):
    """`(N, R)`: the rows of `x` and its number of sub-batches of `size` (None: one)."""
    n = ops.shape(keras.tree.flatten(x)[0])[0]
    if size is None:
        return n, 1
    if isinstance(n, int) and n % size:
        raise _checks.invalid("micro_batch_size", f"a divisor of the batch size {n}", size)
    return n, n // size


def _micro(size):
    return _checks.check_int("micro_batch_size", size, minimum=1, allow_none=True)


def curvature_fn(flat, loss, *, operator="hessian", training=False, include_regularization=True,
                 micro_batch_size=None):
    """Builds `(theta, non_trainable, x, y, sample_weight) -> matvec` of `H` or `G` on the
    block of `flat`: (m,) to (m,) in `flat.dtype`; arguments as in `HessianOperator`."""
    operator = _checks.check_choice("operator", operator, OPERATORS)
    size = _micro(micro_batch_size)
    record = _hessian if operator == "hessian" else _gauss_newton
    kwargs = dict(training=training, include_regularization=include_regularization)

    def fn(theta, non_trainable, x, y, sample_weight=None):
        if size is None:
            return record(flat, loss, theta, non_trainable, x, y, sample_weight, **kwargs)
        _, count = sub_batches(x, size)

        def matvec(v):
            def body(r, total):
                batch = [_rows(t, r * size, size) for t in (x, y, sample_weight)]
                return total + record(flat, loss, theta, non_trainable, *batch, **kwargs)(v)
            return ops.fori_loop(0, count, body, ops.zeros_like(v)) / ops.cast(count, v.dtype)

        return matvec

    return fn


def _objective(flat, loss, theta, non_trainable, x, y, sw, **kwargs):
    """`block -> L`: the loss as a function of the block (m,) of `theta`."""
    return lambda block: flat.loss(loss, theta, non_trainable, x, y, sw, block=block, **kwargs)


def _hessian(flat, loss, theta, non_trainable, x, y, sw, **kwargs):
    objective = _objective(flat, loss, theta, non_trainable, x, y, sw, **kwargs)
    return backend.get().linearize_grad(objective, flat.select(theta))[2]


def _gauss_newton(flat, loss, theta, non_trainable, x, y, sw, *, training,
                  include_regularization):
    primitives, block, seen = backend.get(), flat.select(theta), {}

    def outputs(block):
        out, added = flat.forward(theta, non_trainable, x, block=block, training=training,
                                  return_losses=True)
        matrix, seen["restore"] = as_matrix(out)
        seen["added"] = bool(added)
        return matrix

    out, jvp, vjp = primitives.linearize(outputs, block)
    _, _, h_out = primitives.linearize_grad(
        lambda o: loss_value(loss, y, seen["restore"](o), sw, flat.dtype), ops.stop_gradient(out))
    if not (include_regularization and seen["added"]):
        return lambda v: vjp(h_out(jvp(v)))

    def added_losses(block):
        return sum(flat.forward(theta, non_trainable, x, block=block, training=training,
                                return_losses=True)[1])
    _, _, reg_hvp = primitives.linearize_grad(added_losses, block)
    return lambda v: vjp(h_out(jvp(v))) + reg_hvp(v)


def gradient_fn(flat, loss, **kwargs):
    """Builds `(theta, non_trainable, x, y, sample_weight) -> (L, grad)`, grad (m,)."""
    def fn(theta, non_trainable, x, y, sample_weight=None):
        objective = _objective(flat, loss, theta, non_trainable, x, y, sample_weight, **kwargs)
        return backend.get().value_and_grad(objective, flat.select(theta))
    return fn


def ntk_pieces_matvec(pieces, num_outputs, trace_outputs, unroll_outputs=False):
    """`u -> Theta u` from row blocks `[(start, stop, jvp, vjp, place)]` (`place()`: e.g. a
    device): `J J^T U = concat_r J_r (sum_s J_s^T U_s)`, U (N, K); traced: on `U = u e_c^T`."""
    def gram(cot):
        terms = []
        for start, stop, _, vjp, place in pieces:
            with place():
                terms.append(vjp(cot[start:stop]))
        parts = []
        for _, _, jvp, _, place in pieces:
            with place():
                parts.append(jvp(sum(terms)))
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)

    if not trace_outputs:
        return lambda u: ops.reshape(gram(ops.reshape(u, (-1, num_outputs))), (-1,))

    def matvec(u):
        def channel(c, total):
            e = ops.one_hot(c, num_outputs, dtype=u.dtype)
            return total + ops.matmul(gram(u[:, None] * e[None, :]), e)
        if not unroll_outputs:
            return ops.fori_loop(0, num_outputs, channel, ops.zeros_like(u))
        total = ops.zeros_like(u)
        for c in range(num_outputs):
            total = channel(c, total)
        return total
    return matvec


def ntk_fn(flat, *, trace_outputs=True, training=False, micro_batch_size=None,
           unroll_outputs=False):
    """Builds `(theta, non_trainable, x, y=None, sample_weight=None) -> matvec` of the
    empirical NTK (`operators.NTKOperator`) on `x`; `unroll_outputs`: no loop over channels."""
    size = _micro(micro_batch_size)

    def fn(theta, non_trainable, x, y=None, sample_weight=None):
        if size is not None:
            return _micro_ntk(flat, theta, non_trainable, x, training, trace_outputs, size)
        out, jvp, vjp = backend.get().linearize(
            lambda block: flat.outputs(theta, non_trainable, x, block=block, training=training),
            flat.select(theta))
        piece = (0, ops.shape(out)[0], jvp, vjp, contextlib.nullcontext)
        return ntk_pieces_matvec([piece], out.shape[1], trace_outputs, unroll_outputs)

    return fn


def _micro_ntk(flat, theta, non_trainable, x, training, trace_outputs, size):
    """The NTK matvec over sub-batches of `size` rows, each recorded anew in both phases."""
    block, (n, count), k = flat.select(theta), sub_batches(x, size), flat.num_outputs(x)

    def record(r):
        x_r = _rows(x, r * size, size)
        return backend.get().linearize(
            lambda b: flat.outputs(theta, non_trainable, x_r, block=b, training=training), block)

    def matvec(u):
        cot = ops.reshape(u, (n, -1))  # (N, 1) traced, (N, K) full
        eye = ops.eye(k, dtype=u.dtype)

        def transposes(r, w):  # w: (K, m) traced, (m,) full
            vjp, u_r = record(r)[2], _rows(cot, r * size, size)
            if not trace_outputs:
                return w + vjp(u_r)

            def channel(c, w):
                return w + ops.expand_dims(eye[c], 1) * ops.expand_dims(vjp(u_r * eye[c]), 0)
            return ops.fori_loop(0, k, channel, w)

        w = ops.fori_loop(0, count, transposes,
                          ops.zeros((k, flat.size) if trace_outputs else (flat.size,), u.dtype))

        def products(r, result):  # result: (N,) traced, (N, K) full
            jvp = record(r)[1]
            if not trace_outputs:
                return ops.slice_update(result, [r * size, 0], jvp(w))

            def channel(c, acc):
                return acc + ops.matmul(jvp(ops.matmul(eye[c], w)), eye[c])
            part = ops.fori_loop(0, k, channel, ops.zeros((size,), u.dtype))
            return ops.slice_update(result, [r * size], part)

        shape = (n,) if trace_outputs else (n, k)
        return ops.reshape(ops.fori_loop(0, count, products, ops.zeros(shape, u.dtype)), (-1,))

    return matvec


def jacobian_fn(flat, *, training=False):
    """Builds `(theta, non_trainable, x) -> J`, J (N, K, m), `J[i, c] = d f_c(x_i) / d block`."""
    def fn(theta, non_trainable, x):
        return backend.get().jacobian(
            lambda block: flat.outputs(theta, non_trainable, x, block=block, training=training),
            flat.select(theta))[1]
    return fn
