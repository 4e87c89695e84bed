"""Mixed precision: the dynamical losses compute in float32 (Γ, loss, reduction)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

C, T, LR = 3, 8, 0.5
HALF = {"mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}


@pytest.fixture(params=sorted(HALF))
def policy(request):
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy(before)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("loss_dtype", [None, "policy"])
def test_loss_is_float32_and_finite_at_amplitude_1e6(spiral, policy, normalize, loss_dtype):
    x, y = spiral
    logits = tiny_mlp(width=16)(x)  # built under the policy: half-precision outputs
    assert logits.dtype == HALF[policy]
    a, t = 1e6, T // 2  # the emphasis peak: raw weight 1e6 (Γ ≈ 3 if normalized)
    loss = kd.DynamicalLoss(C, amplitude=a, period=T, normalize=normalize, from_logits=True,
                            dtype=policy if loss_dtype else None).at_step(t)
    value = loss(y, logits)
    assert value.dtype == tf.float32 and np.isfinite(float(value))
    gamma = numpy_gamma(t, C, a, T, normalize=normalize)
    exact = np.asarray(tf.cast(logits, tf.float64))  # the half-precision logits, exactly
    want = np.mean(gamma[y] * numpy_crossentropy(y, exact))
    assert not normalize or want < 65504  # both cases: float32 keeps 6 digits
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    for fn in (kd.dynamical_mean_squared_error, kd.dynamical_componentwise_mean_squared_error):
        per_sample = fn(y, logits, tf.constant(gamma, tf.float32))
        assert per_sample.dtype == tf.float32 and np.all(np.isfinite(per_sample))


def _fit(x, y, amplitude, steps=20):
    model = tiny_mlp(width=16)
    model.compile(optimizer=keras.optimizers.SGD(LR),
                  loss=kd.DynamicalLoss(C, amplitude=amplitude, period=T, from_logits=True))
    history = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=steps,
                        epochs=1, verbose=0, callbacks=[kd.DynamicalLossScheduler()])
    return model, history.history["loss"][-1]


@pytest.mark.parametrize("amplitude", [30.0, 1e6])
def test_fit_under_policy_matches_float32(spiral, policy, amplitude):
    x, y = spiral
    mixed, mixed_loss = _fit(x, y, amplitude)
    keras.mixed_precision.set_global_policy("float32")
    reference, reference_loss = _fit(x, y, amplitude)
    keras.mixed_precision.set_global_policy(policy)  # the fixture restores the original
    assert np.isfinite(mixed_loss)
    # The model computes in half precision (the loss in float32), so the runs part
    # by the model's rounding: measured over these 20 steps, float16 weights within
    # 1.1e-3 and loss 4e-5 (rel), bfloat16 (8-bit mantissa) within 5e-2 and 2e-3.
    weight_tol, loss_tol = (5e-3, 1e-3) if policy == "mixed_float16" else (0.1, 1e-2)
    assert mixed_loss == pytest.approx(reference_loss, rel=loss_tol)
    for w_mixed, w_ref in zip(mixed.get_weights(), reference.get_weights()):
        assert np.all(np.isfinite(w_mixed))
        np.testing.assert_allclose(w_mixed, w_ref, atol=weight_tol, rtol=0)
