"""The dynamical losses against NumPy re-derivations of their formulas."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

from conftest import numpy_crossentropy, numpy_gamma, tiny_mlp
import keras_dynloss as kd

pytestmark = pytest.mark.multi_backend
C = 4
RNG = np.random.RandomState(0)
LOGITS = RNG.normal(size=(9, C)).astype("float32")
LABELS = np.array([0, 3, 1, 2, 2, 0, 1, 3, 3], "int32")


def _np(x):
    return ops.convert_to_numpy(x)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("step", [0, 3, 11, 17])
def test_crossentropy_matches_numpy(step):
    loss = kd.DynamicalLoss(C, amplitude=30, period=6, from_logits=True).at_step(step)
    gamma = numpy_gamma(step, C, 30, 6)
    want = np.mean(gamma[LABELS] * numpy_crossentropy(LABELS, LOGITS))
    np.testing.assert_allclose(float(loss(LABELS, LOGITS)), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss(LABELS[:, None], LOGITS)), want, rtol=1e-5)
    one_hot = np.eye(C, dtype="float32")[LABELS]
    np.testing.assert_allclose(float(loss(one_hot, LOGITS)), want, rtol=1e-5)
    soft = 0.7 * one_hot + 0.3 / C  # weight Σ_i y_i Γ_i, CE against the soft target
    logp = np.log(_softmax(LOGITS.astype("float64")))
    want_soft = np.mean((soft @ gamma) * -(soft * logp).sum(-1))
    np.testing.assert_allclose(float(loss(soft, LOGITS)), want_soft, rtol=1e-5)
    probabilities = kd.DynamicalLoss(C, amplitude=30, period=6).at_step(step)
    np.testing.assert_allclose(float(probabilities(LABELS, _softmax(LOGITS))), want, rtol=1e-5)


@pytest.mark.parametrize("from_logits", [True, False])
def test_amplitude_one_equals_keras_crossentropy(from_logits):
    y_pred = LOGITS if from_logits else _softmax(LOGITS)
    ours = kd.DynamicalLoss(C, amplitude=1, period=5, from_logits=from_logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # unbound, but the step cannot matter: silent
        value = float(ours(LABELS, y_pred))
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    np.testing.assert_allclose(value, float(keras_loss(LABELS, y_pred)), rtol=1e-6)


def test_unbound_loss_warns_once_and_uses_step_zero():
    loss = kd.DynamicalLoss(C, amplitude=30, period=6, shape="square", from_logits=True)
    with pytest.warns(UserWarning, match=r"follows no training step.*DynamicalLossScheduler"):
        first = float(loss(LABELS, LOGITS))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        loss(LABELS, LOGITS)
    gamma = numpy_gamma(0, C, 30, 6, "square")
    np.testing.assert_allclose(first, np.mean(gamma[LABELS] * numpy_crossentropy(LABELS, LOGITS)),
                               rtol=1e-5)


def test_sample_weight_and_reductions_multiply_gamma():
    sw = RNG.uniform(0.5, 2.0, size=9).astype("float32")
    gamma = numpy_gamma(4, C, 30, 6)
    per_sample = gamma[LABELS] * numpy_crossentropy(LABELS, LOGITS)
    for reduction, reduce in (("sum", np.sum), ("sum_over_batch_size", np.mean)):
        loss = kd.DynamicalLoss(C, amplitude=30, period=6, from_logits=True,
                                reduction=reduction).at_step(4)
        np.testing.assert_allclose(float(loss(LABELS, LOGITS, sample_weight=sw)),
                                   reduce(sw * per_sample), rtol=1e-5)
    none = kd.DynamicalLoss(C, amplitude=30, period=6, from_logits=True, reduction="none")
    np.testing.assert_allclose(_np(none.at_step(4)(LABELS, LOGITS)), per_sample, rtol=1e-5)


def test_mean_squared_errors():
    gamma = numpy_gamma(7, C, 9, 4)
    one_hot = np.eye(C)[LABELS]
    sq = (one_hot - LOGITS) ** 2
    per_sample = kd.DynamicalMeanSquaredError(C, amplitude=9, period=4).at_step(7)
    np.testing.assert_allclose(float(per_sample(LABELS, LOGITS)),
                               np.mean(gamma[LABELS] * sq.mean(-1)), rtol=1e-5)
    componentwise = kd.DynamicalComponentwiseMeanSquaredError(C, amplitude=9, period=4).at_step(7)
    np.testing.assert_allclose(float(componentwise(one_hot.astype("float32"), LOGITS)),
                               np.mean((gamma * sq).mean(-1)), rtol=1e-5)
    plain = keras.losses.MeanSquaredError()(one_hot, LOGITS)
    np.testing.assert_allclose(float(kd.DynamicalMeanSquaredError(C, amplitude=1, period=3)(
        LABELS, LOGITS)), float(plain), rtol=1e-6)


def test_pure_functions():
    gamma = numpy_gamma(2, C, 9, 4).astype("float32")
    np.testing.assert_allclose(
        _np(kd.dynamical_crossentropy(LABELS, LOGITS, gamma, from_logits=True)),
        gamma[LABELS] * numpy_crossentropy(LABELS, LOGITS), rtol=1e-5)
    sq = (np.eye(C)[LABELS] - LOGITS) ** 2
    np.testing.assert_allclose(_np(kd.dynamical_mean_squared_error(LABELS, LOGITS, gamma)),
                               gamma[LABELS] * sq.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(
        _np(kd.dynamical_componentwise_mean_squared_error(LABELS, LOGITS, gamma)),
        (gamma * sq).mean(-1), rtol=1e-5)


def _numpy_focal(one_hot, logits, alpha=0.25, gamma=2.0):
    p = _softmax(logits.astype("float64"))
    return np.sum(-alpha * (1 - p) ** gamma * one_hot * np.log(p), -1)


def test_dynamical_focal_and_label_smoothing_match_numpy():
    one_hot = np.eye(C, dtype="float32")[LABELS]
    g = numpy_gamma(5, C, 12, 4)
    focal = kd.dynamical(keras.losses.CategoricalFocalCrossentropy(from_logits=True), C,
                         amplitude=12, period=4).at_step(5)
    np.testing.assert_allclose(float(focal(one_hot, LOGITS)),
                               np.mean(g[LABELS] * _numpy_focal(one_hot, LOGITS)), rtol=1e-5)
    smooth = kd.dynamical(keras.losses.CategoricalCrossentropy(from_logits=True,
                                                               label_smoothing=0.1), C,
                          amplitude=12, period=4).at_step(5)
    smoothed = one_hot * 0.9 + 0.1 / C
    logp = np.log(_softmax(LOGITS.astype("float64")))
    np.testing.assert_allclose(float(smooth(one_hot, LOGITS)),
                               np.mean(g[LABELS] * -(smoothed * logp).sum(-1)), rtol=1e-5)
    for base in (keras.losses.CategoricalFocalCrossentropy(from_logits=True),
                 keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)):
        at_one = kd.dynamical(base, C, amplitude=1, period=4)
        np.testing.assert_allclose(float(at_one(one_hot, LOGITS)), float(base(one_hot, LOGITS)),
                                   rtol=1e-6)


def test_dynamical_with_classes_from_a_function():
    """One-vs-rest binary cross-entropy on multi-hot targets, weighted by Γ of the first
    positive class (a function of y_true)."""
    targets = (RNG.rand(9, C) < 0.4).astype("float32")
    targets[np.arange(9), LABELS] = 1.0
    first = np.argmax(targets, -1)
    loss = kd.dynamical(keras.losses.BinaryCrossentropy(from_logits=True), C, amplitude=8,
                        period=3, classes=lambda y: ops.argmax(y, -1)).at_step(4)
    p = 1 / (1 + np.exp(-LOGITS.astype("float64")))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(-1)
    want = np.mean(numpy_gamma(4, C, 8, 3)[first] * bce)
    np.testing.assert_allclose(float(loss(targets, LOGITS)), want, rtol=1e-5)
    per_sample = kd.dynamical(lambda y, p: ops.sum(ops.square(y - p), -1), C, amplitude=8,
                              period=3).at_step(4)
    one_hot = np.eye(C, dtype="float32")[LABELS]
    np.testing.assert_allclose(float(per_sample(one_hot, LOGITS)), np.mean(
        numpy_gamma(4, C, 8, 3)[LABELS] * ((one_hot - LOGITS) ** 2).sum(-1)), rtol=1e-5)


@pytest.mark.parametrize("policy_dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32(policy_dtype):
    loss = kd.DynamicalLoss(C, amplitude=1e6, period=6, from_logits=True,
                            dtype=f"mixed_{policy_dtype}").at_step(3)
    assert loss.dtype == "float32"
    half = ops.cast(LOGITS, policy_dtype)
    value = loss(LABELS, half)
    assert str(ops.convert_to_numpy(value).dtype) == "float32" and np.isfinite(float(value))
    gamma = numpy_gamma(3, C, 1e6, 6)
    want = np.mean(gamma[LABELS] * numpy_crossentropy(LABELS, _np(ops.cast(half, "float32"))))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_bind_sources_and_at_step():
    model = tiny_mlp(num_classes=C)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    loss = kd.DynamicalLoss(C, amplitude=30, period=6, from_logits=True)
    assert loss.step is None and loss.bind(7).step == 7
    assert loss.bind(model.optimizer).step.optimizer is model.optimizer
    assert loss.bind(None).step is None
    fixed = loss.at_step(5)
    assert fixed.step == 5 and loss.step is None and fixed.state is None
    for bad in (-1, 2.5, "model", True):
        with pytest.raises(ValueError, match=r"`source`"):
            loss.bind(bad)
    with pytest.raises(ValueError, match=r"`source`: expected a compiled model"):
        loss.bind(tiny_mlp())


@pytest.mark.parametrize("kwargs, match", [
    (dict(from_logits=1), r"`from_logits`: expected True or False"),
    (dict(amplitude=0), r"`amplitude`"),
    (dict(num_classes=1), r"`num_classes`"),
])
def test_rejected_arguments(kwargs, match):
    args = dict(num_classes=C, amplitude=3, period=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kd.DynamicalLoss(args.pop("num_classes"), **args)


def test_rejected_shapes():
    loss = kd.DynamicalLoss(C, amplitude=3, period=5, from_logits=True).at_step(1)
    with pytest.raises(ValueError, match=r"`y_pred`: expected a tensor of shape \(\.\.\., 4\)"):
        loss(LABELS, LOGITS[:, :3])
    with pytest.raises(ValueError, match=r"`y_true`: expected integer labels of shape"):
        loss(LABELS[:, None].repeat(2, 1), LOGITS)
    with pytest.raises(ValueError, match=r"`loss`"):
        kd.dynamical("not a loss", C, amplitude=3, period=5)
    with pytest.raises(ValueError, match=r"`classes`"):
        kd.dynamical(keras.losses.MeanSquaredError(), C, amplitude=3, period=5, classes="sparse")
