"""The compiled Lanczos (`krylov`) and Hutchinson (`trace`) loops on plain matrices, in-graph."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dynloss.curvature import krylov
from keras_dynloss.curvature import trace


def _sym(n, spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * spectrum) @ q.T, q


@pytest.fixture(params=["stacked", "rows"])
def basis_reads(request, monkeypatch):
    """Both ways `krylov` reads the basis: stacked (small) and row by row."""
    if request.param == "rows":
        monkeypatch.setattr(krylov, "DENSE_BASIS_SIZE", 0)
    return request.param


def _compiled(a, order, ritz_k=1, jit_compile=False, **kwargs):
    """A compiled Lanczos run on `a`: its coefficients, filled basis and top-`ritz_k` Ritz pairs."""
    a_t = tf.constant(a)

    @tf.function(jit_compile=jit_compile)
    def run(start):
        run = krylov.lanczos_loop(lambda v: tf.linalg.matvec(a_t, v), start, order, **kwargs)
        values, residuals, vectors = krylov.ritz(run, ritz_k)
        rows = run.basis.stack() if jit_compile else krylov.basis_rows(run)  # XLA: static shapes only
        return dict(steps=run.steps, breakdowns=run.breakdowns, alphas=run.alphas, betas=run.betas,
                    rows=rows, values=values, residuals=residuals, vectors=vectors)

    return run


@pytest.mark.parametrize("jit_compile", [False, True])
def test_full_order_in_graph_rebuilds_the_matrix(basis_reads, jit_compile):
    spectrum = np.random.default_rng(1).standard_normal(30) * 3
    a, _ = _sym(30, spectrum)
    run = _compiled(a, 30, ritz_k=3, jit_compile=jit_compile)(
        tf.constant(np.random.default_rng(2).standard_normal(30)))
    steps = int(run["steps"])
    q = run["rows"].numpy().T
    t = krylov.tridiagonal(run["alphas"], run["betas"], steps).numpy()
    assert steps == 30 and int(run["breakdowns"]) == 0
    np.testing.assert_allclose(q.T @ q, np.eye(30), atol=1e-12)
    np.testing.assert_allclose(q @ t @ q.T, a, atol=1e-10)
    values, vectors = run["values"], run["vectors"]
    np.testing.assert_allclose(values.numpy(), np.sort(spectrum)[::-1][:3], rtol=1e-10)
    for i in range(3):
        u = vectors.numpy()[:, i]
        np.testing.assert_allclose(a @ u, values.numpy()[i] * u, atol=1e-8)


def test_graph_size_does_not_grow_with_the_order():
    a, _ = _sym(60, np.linspace(-1, 5, 60))
    sizes = []
    for order in (16, 48):  # both above the 12 where `_padded_eigh` adds its 8 x 8 branch
        graph = _compiled(a, order).get_concrete_function(tf.TensorSpec([60], tf.float64)).graph
        sizes.append(len(graph.get_operations()))
    assert sizes[0] == sizes[1]


def test_tolerance_stops_early_and_the_residual_bounds_the_error(basis_reads):
    spectrum = np.r_[10.0, 6.0, np.linspace(-1.0, 1.0, 198)]
    a, _ = _sym(200, spectrum, seed=3)
    start = tf.constant(np.random.default_rng(4).standard_normal(200))
    run = _compiled(a, 60, tol=1e-6)(start)
    steps = int(run["steps"])
    theta, res = float(run["values"][0]), float(run["residuals"][0])
    assert 1 < steps < 60  # stopped by the tolerance, not by the order
    assert res <= 1e-6 * theta
    assert abs(theta - 10.0) <= res + 1e-12
    # One step fewer would not have met the tolerance.
    shorter = _compiled(a, steps - 1)(start)
    assert float(shorter["residuals"][0]) > 1e-6 * float(shorter["values"][0])


def test_top_k_tolerance_watches_every_pair():
    spectrum = np.r_[10.0, 9.5, 9.0, np.linspace(0.0, 1.0, 97)]
    a, _ = _sym(100, spectrum, seed=5)
    start = tf.constant(np.random.default_rng(6).standard_normal(100))
    one = _compiled(a, 80, tol=1e-4, k=1)(start)
    three = _compiled(a, 80, ritz_k=3, tol=1e-4, k=3)(start)
    assert int(three["steps"]) >= int(one["steps"])
    values, residuals = three["values"], three["residuals"]
    assert np.all(residuals.numpy() <= 1e-4 * np.abs(values.numpy()))
    np.testing.assert_allclose(values.numpy(), [10.0, 9.5, 9.0], rtol=1e-4)


def test_start_on_an_eigenvector_breaks_down_and_restarts(basis_reads):
    a = np.diag(np.r_[np.full(5, 2.0), np.full(5, -1.0)])
    start = tf.constant(np.r_[np.ones(5), np.zeros(5)])
    run = _compiled(a, 4, ritz_k=4)(start)
    assert int(run["breakdowns"]) >= 1 and int(run["steps"]) == 4
    values = run["values"]
    assert values.numpy()[0] == pytest.approx(2.0, abs=1e-12)
    assert values.numpy()[-1] == pytest.approx(-1.0, abs=1e-12)  # found only after the restart
    stopped = _compiled(a, 4, restart=False)(start)
    assert int(stopped["steps"]) == 1


def test_hutchinson_loop_in_graph():
    spectrum = np.random.default_rng(7).standard_normal(40)
    a, _ = _sym(40, spectrum, seed=8)
    a_t = tf.constant(a)
    sample = tf.function(lambda seed: trace.hutchinson_loop(lambda v: tf.linalg.matvec(a_t, v), 40, 400, seed))
    s = sample(tf.constant([3, 1], tf.int64)).numpy()
    assert s.shape == (400,)
    assert abs(s.mean() - np.trace(a)) <= 3 * s.std(ddof=1) / np.sqrt(400)
    # Different seeds give different probes, the same seed the same ones.
    np.testing.assert_array_equal(s, sample(tf.constant([3, 1], tf.int64)).numpy())
    assert not np.array_equal(s, sample(tf.constant([3, 2], tf.int64)).numpy())
    # Exact on a diagonal matrix with Rademacher probes.
    d = tf.constant(np.arange(6.0))
    diag = trace.hutchinson_loop(lambda v: d * v, 6, 3, 0).numpy()
    np.testing.assert_allclose(diag, 15.0)


def _op_types(concrete):
    graph_def = concrete.graph.as_graph_def()
    types = [node.op for node in graph_def.node]
    for function in graph_def.library.function:
        types += [node.op for node in function.node_def]
    return types


def test_small_bases_are_stacked_large_ones_read_row_by_row(monkeypatch):
    a, _ = _sym(60, np.linspace(-1, 5, 60))
    spec = tf.TensorSpec([60], tf.float64)
    stacked = _op_types(_compiled(a, 16).get_concrete_function(spec))
    monkeypatch.setattr(krylov, "DENSE_BASIS_SIZE", 16 * 60 - 1)  # one number over: rows
    rows = _op_types(_compiled(a, 16).get_concrete_function(spec))
    assert "TensorListStack" in stacked and "TensorListStack" not in rows
    assert rows.count("TensorListGetItem") > stacked.count("TensorListGetItem")
