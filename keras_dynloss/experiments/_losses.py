"""The objectives the spiral runners can train with (``--loss``).

* ``ce``: :class:`~keras_dynloss.DynamicalLoss` (DCE); A = 1 is cross-entropy.
* ``mse``: plain MSE on one-hot targets (A must be 1).
* ``dmse``: :class:`~keras_dynloss.DynamicalMeanSquaredError`, the sample's squared
  error weighted by Γ of its class; A = 1 is MSE.
* ``dmse-componentwise``: :class:`~keras_dynloss.DynamicalComponentwiseMeanSquaredError`,
  output component i weighted by Γ_i; A = 1 is MSE.

The two DMSE classes are the package's two readings of the dynamical MSEs of
Lavin Pallero & Ruiz-Garcia (arXiv 2410.10690), whose exact definitions could
not be retrieved offline. ``mse`` is :class:`~keras_dynloss.DynamicalMeanSquaredError`
with A = 1 (Γ ≡ 1), which is ``keras.losses.MeanSquaredError`` on one-hot
targets (tested), so the step-following machinery is the same for all four.
"""

from keras_dynloss._checks import check_choice, invalid
from keras_dynloss.losses import (
    DynamicalComponentwiseMeanSquaredError,
    DynamicalLoss,
    DynamicalMeanSquaredError,
    dynamical_componentwise_mean_squared_error,
    dynamical_crossentropy,
    dynamical_mean_squared_error,
)

__all__ = ["LOSSES", "LOSS_LABELS", "spiral_loss", "objective"]

LOSSES = ("ce", "mse", "dmse", "dmse-componentwise")
LOSS_LABELS = {
    "ce": ("cross-entropy", "DCE"),
    "mse": ("MSE", "MSE"),
    "dmse": ("MSE", "DMSE (per sample)"),
    "dmse-componentwise": ("MSE", "DMSE (per component)"),
}


def cell_label(loss, amplitude):
    """``"cross-entropy"`` / ``"DCE A=70"`` / ``"MSE"`` / ``"DMSE (per sample) A=70"``."""
    static, dynamic = LOSS_LABELS[loss]
    return static if amplitude == 1 else f"{dynamic} A={amplitude:g}"


def spiral_loss(name, num_classes, *, amplitude, period, static_after=None, dtype=None):
    """The ``name`` loss (see the module table) with a triangular Γ(t).

    Args:
        name: one of :data:`LOSSES`.
        num_classes: C.
        amplitude: A (1 = the static loss; must be 1 for ``"mse"``).
        period: T in steps.
        static_after: step from which Γ ≡ 1.
        dtype: the loss dtype (the model's).

    Returns:
        A keras_dynloss dynamical loss, outputs are logits for ``"ce"`` and raw
        outputs compared with one-hot targets for the MSEs.
    """
    check_choice("loss", name, LOSSES)
    if name == "mse" and amplitude != 1:
        raise invalid("amplitude", "1 with loss='mse' (plain MSE has no Γ(t); use "
                      "loss='dmse' or 'dmse-componentwise')", amplitude)
    common = dict(amplitude=amplitude, period=period, static_after=static_after, dtype=dtype)
    if name == "ce":
        return DynamicalLoss(num_classes, from_logits=True, **common)
    if name == "dmse-componentwise":
        return DynamicalComponentwiseMeanSquaredError(num_classes, **common)
    return DynamicalMeanSquaredError(num_classes, **common)


def objective(loss, labels, y_pred, gamma):
    """Per-sample values of ``loss``'s function at class weights ``gamma``, shape (B,).

    ``loss`` None means plain cross-entropy from logits.
    """
    if loss is None or isinstance(loss, DynamicalLoss):
        from_logits = True if loss is None else loss.from_logits
        return dynamical_crossentropy(labels, y_pred, gamma, from_logits=from_logits)
    if isinstance(loss, DynamicalComponentwiseMeanSquaredError):
        return dynamical_componentwise_mean_squared_error(labels, y_pred, gamma)
    if isinstance(loss, DynamicalMeanSquaredError):
        return dynamical_mean_squared_error(labels, y_pred, gamma)
    raise invalid("loss", "a keras_dynloss dynamical loss or None", loss)
