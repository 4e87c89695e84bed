"""PyTorch: stateless random vectors and compiled functions.

The autodiff primitives of the curvature products are below the random functions.
"""

import numpy as np
import torch
from keras import ops


def _generator(seed, device):
    seed = np.asarray(ops.convert_to_numpy(seed), np.int64) % 2**32
    generator = torch.Generator(device=device)
    # torch keeps 32 bits of a CPU seed: hash both words into them.
    generator.manual_seed(int(np.random.SeedSequence(seed.tolist()).generate_state(1)[0]))
    return generator


def _device():
    return ops.zeros(()).device


def uniform(shape, seed, dtype):
    """Entries uniform on [-1, 1), a function of `seed` (int32 (2,)) alone."""
    device = _device()
    dtype = getattr(torch, str(dtype))
    u = torch.rand(tuple(shape), generator=_generator(seed, device), dtype=dtype, device=device)
    return 2.0 * u - 1.0


def normal(shape, seed, dtype):
    """Standard normal entries, a function of `seed` (int32 (2,)) alone."""
    device = _device()
    dtype = getattr(torch, str(dtype))
    return torch.randn(tuple(shape), generator=_generator(seed, device), dtype=dtype, device=device)


def compile_function(fn, *, jit_compile=False):
    """`fn` itself: curvature code runs eagerly on PyTorch (`jit_compile` is ignored)."""
    del jit_compile
    return fn


# -- autodiff primitives of the curvature products ----------------------------------------
#
# Same names and signatures in every backend module. `fn` maps `theta` (a tensor) to a
# scalar (`value_and_grad`, `linearize_grad`) or to one tensor (`linearize`, `jacobian`).
# Results are detached: the graph recorded here lives only in the returned closures.


def _leaf(theta):
    return theta.detach().requires_grad_(True)


def _grad(outputs, inputs, cotangent, **kwargs):
    if not outputs.requires_grad:  # `outputs` does not depend on `inputs`
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(outputs, inputs, cotangent, allow_unused=True, **kwargs)
    return torch.zeros_like(inputs) if grad is None else grad


def value_and_grad(fn, theta):
    """`(fn(theta), d fn / d theta)` for a scalar `fn`."""
    theta = _leaf(theta)
    with torch.enable_grad():
        value = fn(theta)
        grad = _grad(value, theta, None)
    return value.detach(), grad


def linearize_grad(fn, theta):
    """`(value, grad, hvp)`: `hvp(v) = H v`, `H` the Hessian of the scalar `fn` at `theta`.

    The forward pass and the gradient are recorded once (`create_graph=True`); each
    `hvp(v)` is one backward pass through the gradient (`retain_graph=True`).
    """
    theta = _leaf(theta)
    with torch.enable_grad():
        value = fn(theta)
        grad = _grad(value, theta, None, create_graph=True)

    def hvp(v):
        with torch.enable_grad():
            return _grad(grad, theta, v, retain_graph=True)

    return value.detach(), grad.detach(), hvp


def linearize(fn, theta):
    """`(out, jvp, vjp)`: `jvp(w) = J w`, `vjp(u) = J^T u`, `J = d fn / d theta` at `theta`.

    The forward pass is recorded once. `vjp` is one backward pass; `jvp` is the transpose
    of `u -> J^T u`, recorded once at `u = 0`: one double-backward pass per product.
    """
    theta = _leaf(theta)
    with torch.enable_grad():
        out = fn(theta)
        zeros = torch.zeros_like(out, requires_grad=True)
        at_zero = _grad(out, theta, zeros, create_graph=True)

    def vjp(u):
        with torch.enable_grad():
            return _grad(out, theta, u, retain_graph=True)

    def jvp(w):
        with torch.enable_grad():
            return _grad(at_zero, zeros, w, retain_graph=True)

    return out.detach(), jvp, vjp


def jacobian(fn, theta):
    """`(out, J)`, `J` of shape `out.shape + theta.shape` (batched VJPs)."""
    theta = _leaf(theta)
    with torch.enable_grad():
        out = fn(theta)
        eye = torch.eye(out.numel(), dtype=out.dtype, device=out.device).reshape((-1,) + out.shape)
        rows = None
        if out.requires_grad:
            (rows,) = torch.autograd.grad(out, theta, eye, is_grads_batched=True, allow_unused=True)
    if rows is None:  # `out` does not depend on `theta`
        rows = torch.zeros((out.numel(),) + theta.shape, dtype=theta.dtype, device=theta.device)
    return out.detach(), rows.reshape(out.shape + theta.shape)
