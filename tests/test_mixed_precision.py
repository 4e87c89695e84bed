"""Mixed precision: the dynamical losses compute in float32 (Γ, loss, reduction), and a
`fit` under `mixed_float16` / `mixed_bfloat16` follows the float32 run."""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

pytestmark = pytest.mark.multi_backend
C, T, LR = 3, 8, 0.5


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_is_float32_and_finite_at_amplitude_1e6(spiral, policy, normalize):
    x, y = spiral
    logits = tiny_mlp(width=16)(x)  # built under the policy: half-precision outputs
    assert str(ops.convert_to_numpy(logits).dtype) != "float32"
    a, t = 1e6, T // 2
    loss = kd.DynamicalLoss(C, amplitude=a, period=T, normalize=normalize, from_logits=True,
                            dtype=policy).at_step(t)
    value = ops.convert_to_numpy(loss(y, logits))
    assert value.dtype == np.float32 and np.isfinite(value)
    exact = ops.convert_to_numpy(ops.cast(logits, "float32")).astype(np.float64)
    want = np.mean(numpy_gamma(t, C, a, T, normalize=normalize)[y] * numpy_crossentropy(y, exact))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def _fit(x, y, amplitude, steps=20):
    model = tiny_mlp(width=16)
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=kd.DynamicalLoss(C, amplitude=amplitude, period=T, from_logits=True))
    history = model.fit(np.concatenate([x] * steps), np.concatenate([y] * steps),
                        batch_size=len(x), shuffle=False, epochs=1, verbose=0,
                        callbacks=[kd.DynamicalLossScheduler()])
    return model, history.history["loss"][-1]


@pytest.mark.parametrize("amplitude", [30.0, 1e6])
def test_fit_under_policy_follows_float32(spiral, policy, amplitude):
    x, y = spiral
    mixed, mixed_loss = _fit(x, y, amplitude)
    keras.mixed_precision.set_global_policy("float32")
    reference, reference_loss = _fit(x, y, amplitude)
    keras.mixed_precision.set_global_policy(policy)  # the fixture restores the original
    # The model computes in half precision (the loss in float32): the runs part by the
    # model's rounding (bfloat16 keeps 8 bits of mantissa).
    weight_tol, loss_tol = (5e-3, 1e-3) if policy == "mixed_float16" else (0.1, 1e-2)
    assert np.isfinite(mixed_loss) and mixed_loss == pytest.approx(reference_loss, rel=loss_tol)
    for w_mixed, w_ref in zip(mixed.get_weights(), reference.get_weights()):
        assert np.all(np.isfinite(w_mixed))
        np.testing.assert_allclose(w_mixed, w_ref, atol=weight_tol, rtol=0)
