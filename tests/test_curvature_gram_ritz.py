"""The Gram pair of a Lanczos run on `A = M M^T` (`gram_ritz`, `lanczos_loop(gram_norm=)`)
against a dense NumPy Rayleigh-Ritz of `M^T M` on `span(M^T Q_j)`."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from keras_dynloss.curvature import krylov


def _gram_problem(seed=1, n=40, d=70):
    """`M` (n, d) with a dominant singular value and a start near its top direction."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((d, n)))
    sig = np.sqrt(np.concatenate([[100.0, 6.0, 4.0], 3.0 * 0.8 ** np.arange(n - 3)]))
    m = u @ np.diag(sig) @ v.T
    start = u[:, 0] + 0.05 * u[:, 1] + 0.03 * rng.standard_normal(n) / np.sqrt(n)
    return m, start


def _run(m, start, tol, jit, gram=True):
    m_t = tf.constant(m)

    @tf.function(jit_compile=jit)
    def run():
        out = krylov.lanczos_loop(
            lambda q: tf.linalg.matvec(m_t, tf.linalg.matvec(m_t, q, transpose_a=True)), tf.constant(start), 8,
            tol=tol, gram_norm=(lambda q: tf.reduce_sum(tf.linalg.matvec(m_t, q, transpose_a=True) ** 2))
            if gram else None)
        values, residuals, vectors = krylov.ritz(out, 1)
        used = out.gram[0] if gram else tf.constant(False)
        # Under XLA the filled rows cannot be gathered (a dynamic shape): read all 8 + 1.
        rows = tf.stack([out.basis.read(i) for i in range(9)]) if jit else krylov.basis_rows(out)
        return dict(steps=out.steps, used=used, value=values[0], residual=residuals[0], vector=vectors[:, 0],
                    rows=rows)

    out = {k: v.numpy() for k, v in run().items()}
    out["rows"] = out["rows"][:int(out["steps"])]
    return out


def _dense_gram_pair(m, q):
    """Top Rayleigh-Ritz pair of `M^T M` on `span(M^T q_i)`: value, relative
    residual in parameter space, unit sample-space vector `M y / ||M y||`."""
    y_basis = m.T @ q.T
    h = (m.T @ m @ y_basis).T @ y_basis
    g = y_basis.T @ y_basis
    theta, c = scipy.linalg.eigh(h, g)
    y = y_basis @ c[:, -1]
    y /= np.linalg.norm(y)
    residual = np.linalg.norm(m.T @ m @ y - theta[-1] * y) / theta[-1]
    u = m @ y
    return theta[-1], residual, u / np.linalg.norm(u)


@pytest.mark.parametrize("jit", [False, True])
def test_gram_pair_equals_dense_rayleigh_ritz_of_mt_m(jit):
    m, start = _gram_problem()
    out = _run(m, start, 1e-3, jit)
    plain = _run(m, start, 1e-3, jit, gram=False)
    # The Ritz pair of T_2 misses 1e-3; the Gram pair after 2 products passes.
    assert int(out["steps"]) == 2 and out["used"] and int(plain["steps"]) == 3
    value, residual, u = _dense_gram_pair(m, out["rows"])
    assert out["value"] == pytest.approx(value, rel=1e-12)
    assert out["residual"] / out["value"] == pytest.approx(residual, rel=1e-6)
    assert residual <= 1e-3
    vector = out["vector"] / np.linalg.norm(out["vector"])
    assert abs(vector @ u) == pytest.approx(1.0, abs=1e-12)
    # An eigenvalue of A within the residual (A and M^T M share nonzero eigenvalues).
    lam = np.linalg.eigvalsh(m @ m.T)[-1]
    assert abs(out["value"] - lam) <= out["residual"]
    # The sample-space residual is bounded by the reported one.
    a = m @ m.T
    assert np.linalg.norm(a @ vector - out["value"] * vector) / out["value"] <= (
        out["residual"] / out["value"] * np.sqrt(lam / out["value"]) * (1 + 1e-9))


def test_gram_pair_not_used_when_the_ritz_pair_passes_or_cannot():
    m, start = _gram_problem()
    loose = _run(m, start, 1e-2, False)  # the Ritz pair of T_2 already passes
    assert int(loose["steps"]) == 2 and not loose["used"]
    tight = _run(m, start, 1e-9, False)  # no Gram pair can pass early: plain Lanczos steps
    plain = _run(m, start, 1e-9, False, gram=False)
    assert not tight["used"] and int(tight["steps"]) == int(plain["steps"])
    assert tight["value"] == pytest.approx(plain["value"], rel=1e-12)


def test_gram_norm_needs_a_tolerance_and_one_pair():
    with pytest.raises(ValueError, match="gram_norm"):
        krylov.lanczos_loop(lambda v: v, tf.ones([4], tf.float64), 3, gram_norm=lambda q: tf.reduce_sum(q * q))
    with pytest.raises(ValueError, match="gram_norm"):
        krylov.lanczos_loop(lambda v: v, tf.ones([4], tf.float64), 3, tol=1e-3, k=2,
                            gram_norm=lambda q: tf.reduce_sum(q * q))


@pytest.mark.parametrize("trace_outputs, jit, micro", [(True, False, None), (True, True, None), (False, False, None),
                                                        (True, False, 10)])
def test_probe_ntk_gram_pairs_against_the_dense_kernel(trace_outputs, jit, micro):
    import keras

    from keras_dynloss.curvature import CurvatureProbe, ntk_gram

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((30, 2)), rng.integers(0, 3, 30)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="tanh", dtype="float64"),
                              keras.layers.Dense(3, dtype="float64")])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe = CurvatureProbe((x, y), ntk=True, ntk_order=10, ntk_trace_outputs=trace_outputs, eos_ratio=False,
                           jit_compile=jit, micro_batch_size=micro)
    products = []
    for _ in range(6):
        values = probe.probe(model)
        lam = np.linalg.eigvalsh(ntk_gram(model, x, trace_outputs=trace_outputs))[-1]
        residual = values["ntk_max_eig_residual"]
        assert residual <= 1e-3 * values["ntk_max_eig"]
        assert abs(values["ntk_max_eig"] - lam) <= residual  # an eigenvalue within the residual
        products.append(values["ntk_matvecs"])
        model.fit(x, y, epochs=10, batch_size=30, verbose=0)
    # Warm-started probes stop on a Gram pair: half a product (backward passes only) past a whole one.
    assert any(p % 1 == 0.5 for p in products), products
    assert probe.history["ntk_matvecs"] == products


@pytest.mark.parametrize("j", [0, 1, 2, 3])
def test_gram_pair_residual_formula_at_every_step(j):
    from keras_dynloss.curvature import gram_ritz

    m, _ = _gram_problem(seed=3)
    start = np.random.default_rng(4).standard_normal(m.shape[0])
    a = m @ m.T
    m_t = tf.constant(a)
    run = krylov.lanczos_loop(lambda q: tf.linalg.matvec(m_t, q), tf.constant(start), 6)
    alphas, betas = run.alphas.numpy(), run.betas.numpy()
    rows = krylov.basis_rows(run).numpy()
    t = krylov.tridiagonal(alphas, betas, j + 1).numpy()
    # T_j's eigenpairs, descending, padded to (6, 6) as the stopping rule pads them.
    lam, vec = np.linalg.eigh(t)
    values, s = np.full(6, -1.0), np.eye(6)
    values[:j + 1], s[:j + 1, :j + 1] = lam[::-1], vec[:, ::-1]
    theta, coefficients, known, last = (v.numpy() for v in gram_ritz.gram_pair(
        run.alphas, run.betas, tf.constant(j), (tf.constant(values), tf.constant(s))))
    value, residual, u = _dense_gram_pair(m, rows[:j + 1])
    assert theta == pytest.approx(value, rel=1e-10)
    # alpha_{j+1} = ||M^T q_{j+1}||^2, the half product the loop would run.
    alpha_next = np.sum((m.T @ rows[j + 1]) ** 2)
    assert alpha_next * last > 1e-3 * known  # both terms matter here
    assert np.sqrt(known + alpha_next * last) / theta == pytest.approx(residual, rel=1e-8)
    vector = coefficients[:j + 2] @ rows[:j + 2]
    assert abs(vector @ u) / np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-10)
