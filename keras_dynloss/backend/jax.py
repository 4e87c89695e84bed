"""JAX: stateless random vectors and compiled functions.

The autodiff primitives of the curvature products are below the random functions.
"""

import jax


def _key(seed):
    return jax.random.fold_in(jax.random.key(seed[0]), seed[1])


def uniform(shape, seed, dtype):
    """Entries uniform on [-1, 1), a function of `seed` (int32 (2,)) alone."""
    return jax.random.uniform(_key(seed), shape, dtype, -1.0, 1.0)


def normal(shape, seed, dtype):
    """Standard normal entries, a function of `seed` (int32 (2,)) alone."""
    return jax.random.normal(_key(seed), shape, dtype)


def compile_function(fn, *, jit_compile=False):
    """`fn` compiled by XLA (`jax.jit`; JAX always compiles, whatever `jit_compile` says)."""
    del jit_compile
    return jax.jit(fn)


# -- autodiff primitives of the curvature products ----------------------------------------
#
# Same names and signatures in every backend module. `fn` maps `theta` (an array) to a
# scalar (`value_and_grad`, `linearize_grad`) or to one array (`linearize`, `jacobian`).


def value_and_grad(fn, theta):
    """`(fn(theta), d fn / d theta)` for a scalar `fn`."""
    return jax.value_and_grad(fn)(theta)


def linearize_grad(fn, theta):
    """`(value, grad, hvp)`: `hvp(v) = H v`, `H` the Hessian of the scalar `fn` at `theta`.

    `jax.linearize` of `jax.value_and_grad(fn)`: the forward pass and the gradient run
    once; each `hvp(v)` evaluates only the linearised (tangent) program.
    """
    (value, grad), tangent = jax.linearize(jax.value_and_grad(fn), theta)
    return value, grad, lambda v: tangent(v)[1]


def linearize(fn, theta):
    """`(out, jvp, vjp)`: `jvp(w) = J w`, `vjp(u) = J^T u`, `J = d fn / d theta` at `theta`.

    One `jax.linearize` (the forward pass runs once); `vjp` is its `jax.linear_transpose`.
    """
    out, jvp = jax.linearize(fn, theta)
    transpose = jax.linear_transpose(jvp, theta)
    return out, jvp, lambda u: transpose(u)[0]


def jacobian(fn, theta):
    """`(out, J)`, `J` of shape `out.shape + theta.shape` (`jax.vjp`, vmapped)."""
    out, vjp = jax.vjp(fn, theta)
    eye = jax.numpy.eye(out.size, dtype=out.dtype).reshape((out.size,) + out.shape)
    rows = jax.vmap(lambda u: vjp(u)[0])(eye)
    return out, rows.reshape(out.shape + theta.shape)
