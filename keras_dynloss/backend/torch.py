"""PyTorch: random vectors, compiled functions, autodiff (see `keras_dynloss.backend`)."""

import numpy as np
import torch
from keras import ops


def _random(sample, shape, seed, dtype):
    seed = np.asarray(ops.convert_to_numpy(seed), np.int64) % 2**32
    device = ops.zeros(()).device
    generator = torch.Generator(device=device)
    # torch keeps 32 bits of a CPU seed: hash both words into them.
    generator.manual_seed(int(np.random.SeedSequence(seed.tolist()).generate_state(1)[0]))
    return sample(tuple(shape), generator=generator, dtype=getattr(torch, str(dtype)),
                  device=device)


def uniform(shape, seed, dtype):
    return 2.0 * _random(torch.rand, shape, seed, dtype) - 1.0


def normal(shape, seed, dtype):
    return _random(torch.randn, shape, seed, dtype)


def compile_function(fn, *, jit_compile=False):
    """`fn` itself: curvature code runs eagerly on PyTorch (`jit_compile` is ignored)."""
    del jit_compile
    return fn


def _leaf(theta):
    """`theta` as a new leaf: results are detached, the graph lives only in the closures."""
    return theta.detach().requires_grad_(True)


def _grad(outputs, inputs, cotangent, **kwargs):
    if not outputs.requires_grad:  # `outputs` does not depend on `inputs`
        return torch.zeros_like(inputs)
    (grad,) = torch.autograd.grad(outputs, inputs, cotangent, allow_unused=True, **kwargs)
    return torch.zeros_like(inputs) if grad is None else grad


def value_and_grad(fn, theta):
    theta = _leaf(theta)
    with torch.enable_grad():
        value = fn(theta)
        grad = _grad(value, theta, None)
    return value.detach(), grad


def linearize_grad(fn, theta):
    """Forward pass and gradient recorded once; `hvp(v)` is a backward pass through the gradient."""
    theta = _leaf(theta)
    with torch.enable_grad():
        value = fn(theta)
        grad = _grad(value, theta, None, create_graph=True)

    def hvp(v):
        with torch.enable_grad():
            return _grad(grad, theta, v, retain_graph=True)

    return value.detach(), grad.detach(), hvp


def linearize(fn, theta):
    """Forward pass recorded once; `vjp` is a backward pass, `jvp` its transpose (double VJP)."""
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
