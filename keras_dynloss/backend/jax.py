"""JAX: random vectors, compiled functions, autodiff (see `keras_dynloss.backend`)."""

import jax


def _key(seed):
    return jax.random.fold_in(jax.random.key(seed[0]), seed[1])


def uniform(shape, seed, dtype):
    return jax.random.uniform(_key(seed), shape, dtype, -1.0, 1.0)


def normal(shape, seed, dtype):
    return jax.random.normal(_key(seed), shape, dtype)


def compile_function(fn, *, jit_compile=False):
    """`fn` compiled by XLA (`jax.jit`; JAX always compiles, whatever `jit_compile` says)."""
    del jit_compile
    return jax.jit(fn)


def value_and_grad(fn, theta):
    return jax.value_and_grad(fn)(theta)


def linearize_grad(fn, theta):
    """`jax.linearize` of `jax.value_and_grad(fn)`: `hvp(v)` runs only the tangent program."""
    (value, grad), tangent = jax.linearize(jax.value_and_grad(fn), theta)
    return value, grad, lambda v: tangent(v)[1]


def linearize(fn, theta):
    """One `jax.linearize` (the forward pass runs once); `vjp` is its `linear_transpose`."""
    out, jvp = jax.linearize(fn, theta)
    transpose = jax.linear_transpose(jvp, theta)
    return out, jvp, lambda u: transpose(u)[0]


def jacobian(fn, theta):
    out, vjp = jax.vjp(fn, theta)
    eye = jax.numpy.eye(out.size, dtype=out.dtype).reshape((out.size,) + out.shape)
    rows = jax.vmap(lambda u: vjp(u)[0])(eye)
    return out, rows.reshape(out.shape + theta.shape)
