"""The objectives the spiral runners train with (`--loss`; see `python -m keras_dynloss fig4
--help`), and the spiral's description in results files."""

from keras_dynloss._checks import check_choice, invalid

__all__ = ["LOSSES", "SPIRAL", "cell_label", "spiral_loss"]

#: name: (label at A = 1, label of the dynamical loss)
_LABELS = {"ce": ("cross-entropy", "DCE"), "mse": ("MSE", "MSE"),
           "dmse": ("MSE", "DMSE (per sample)"),
           "dmse-componentwise": ("MSE", "DMSE (per component)")}
LOSSES = tuple(_LABELS)
#: The training data of every spiral run.
SPIRAL = "spiral(points_per_class=100, num_classes=3, revolutions=4, noise=0.2, seed=0)"


def cell_label(loss, amplitude):
    """"cross-entropy", "DCE A=70", "MSE", "DMSE (per sample) A=70", ..."""
    static, dynamical = _LABELS[loss]
    return static if amplitude == 1 else f"{dynamical} A={amplitude:g}"


def spiral_loss(name, num_classes, *, amplitude, period, static_after=None, dtype=None):
    """The `name` loss (of `LOSSES`) with a triangular Γ(t) of amplitude A (1: static; "mse"
    needs 1) and period T steps, Γ ≡ 1 from `static_after` on, in `dtype` (the model's); of
    logits for "ce", of raw outputs against one-hot targets for the MSEs.

    Example:
        >>> loss = spiral_loss("dmse", 3, amplitude=70, period=5000, static_after=65000)
    """
    import keras_dynloss as kd

    check_choice("loss", name, LOSSES)
    if name == "mse" and amplitude != 1:
        raise invalid("amplitude", "1 with loss='mse' (plain MSE has no Γ(t); use loss='dmse' "
                      "or 'dmse-componentwise')", amplitude)
    common = dict(amplitude=amplitude, period=period, static_after=static_after, dtype=dtype)
    if name == "ce":
        return kd.DynamicalLoss(num_classes, from_logits=True, **common)
    if name == "dmse-componentwise":
        return kd.DynamicalComponentwiseMeanSquaredError(num_classes, **common)
    return kd.DynamicalMeanSquaredError(num_classes, **common)
