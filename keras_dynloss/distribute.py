"""Dynamical losses under ``tf.distribute``: the custom-loop helper and the fit check.

Keras 3's ``model.fit`` / ``evaluate`` (with ``DynamicalLossScheduler``) run under
``MirroredStrategy`` and a single-worker ``MultiWorkerMirroredStrategy`` (both
tested here), and Keras supports ``TPUStrategy`` (untested here). They cannot run
``MultiWorkerMirroredStrategy`` with several workers (keras-team/keras#20585: the
first batch fails with "Attempt to convert a value (PerReplica...)") nor
``ParameterServerStrategy``. There a custom training loop is the way:
``strategy.run`` a step that averages the per-sample dynamical loss over the
*global* batch (:func:`compute_average_loss`), with the loss bound to the
optimizer. ``examples/multiworker_custom_loop.py`` is the recipe.
"""

import keras
import tensorflow as tf

from keras_dynloss._checks import check_int, invalid
from keras_dynloss.losses import _DynamicalBase

__all__ = ["check_fit_strategy", "compute_average_loss"]

RECIPE = (
    "Train with a custom loop instead: `strategy.run` a step whose loss is "
    "`keras_dynloss.distribute.compute_average_loss(loss, y, logits, "
    "global_batch_size=...)`, with `loss = DynamicalLoss(..., reduction=\"none\")"
    ".bind(optimizer)` (recipe: examples/multiworker_custom_loop.py, docs/guide/distributed.md)."
)


def compute_average_loss(loss, y_true, y_pred, *, global_batch_size, sample_weight=None):
    """One replica's share of the dynamical loss, averaged over the global batch.

    With B the global batch size (all replicas of all workers) and ``R`` the
    samples of this replica, returns

        ``L_r = (1/B) Σ_{μ ∈ R} w_μ Γ_{y_μ}(t) ℓ(y_μ, f(x_μ))``

    so that ``Σ_r L_r`` (what the optimizer's gradient all-reduce sums) is the
    one-device loss of the whole global batch, and the update equals a
    one-device step on it. Γ is read at the step the loss is bound to
    (``loss.bind(optimizer)``: ``optimizer.iterations``, one count per update,
    shared by all replicas). This is ``tf.nn.compute_average_loss`` applied to
    the per-sample values, after checking the two mistakes that silently give a
    wrong scale or a wrong Γ: a reduced loss and an unbound one.

    Call it inside the replica function passed to ``strategy.run``. Add any
    regularisation with ``tf.nn.scale_regularization_loss(sum(model.losses))``.

    Args:
        loss: a keras_dynloss dynamical loss built with ``reduction="none"`` and
            bound to the optimizer (or to an integer step).
        y_true: this replica's labels, shape (b,) / (b, 1) or one-hot (b, C).
        y_pred: this replica's outputs, shape (b, C).
        global_batch_size: B, a positive int (or an integer scalar tensor when
            the last batch is partial).
        sample_weight: optional per-sample weights, shape (b,).

    Returns:
        A scalar tensor of the loss's dtype.

    Example:
        >>> from keras_dynloss.distribute import compute_average_loss
        >>> loss = kd.DynamicalLoss(3, amplitude=70, period=500, from_logits=True,
        ...                         reduction="none").bind(optimizer)
        >>> def step_fn(x, y):
        ...     with tf.GradientTape() as tape:
        ...         value = compute_average_loss(loss, y, model(x, training=True),
        ...                                      global_batch_size=64)
        ...     grads = tape.gradient(value, model.trainable_variables)
        ...     optimizer.apply_gradients(zip(grads, model.trainable_variables))
        >>> strategy.run(step_fn, args=next(iterator))
    """
    if not isinstance(loss, _DynamicalBase):
        raise invalid("loss", "a keras_dynloss dynamical loss", loss)
    if loss.reduction != "none":
        raise invalid(
            "loss",
            'a dynamical loss built with reduction="none" (per-sample values, '
            f"averaged here over the global batch); this one has "
            f"reduction={loss.reduction!r}",
            loss,
        )
    if loss.step is None:
        raise RuntimeError(
            f"{type(loss).__name__} '{loss.name}' has no training step to follow. "
            "In a custom loop bind it to the optimizer once, before training: "
            "`loss.bind(optimizer)` (Γ then follows `optimizer.iterations`)."
        )
    if not tf.is_tensor(global_batch_size):
        global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    per_sample = loss(y_true, y_pred, sample_weight=sample_weight)
    return tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size)


def _num_workers(strategy):
    """Worker tasks (chief included) in a MultiWorkerMirroredStrategy's cluster."""
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return max(1, sum(len(jobs.get(job, ())) for job in ("chief", "worker")))


def check_fit_strategy(model):
    """Raises ``RuntimeError`` if Keras's ``fit`` / ``evaluate`` cannot run the
    model's distribution strategy.

    Refused: ``MultiWorkerMirroredStrategy`` with more than one worker
    (keras-team/keras#20585) and ``ParameterServerStrategy`` (Keras 3 has no
    ``ClusterCoordinator`` support). Accepted: every other strategy, including a
    single-worker ``MultiWorkerMirroredStrategy`` (no ``TF_CONFIG``). The message
    names the strategy and points to the custom-loop recipe.

    With Keras 3.15 ``fit`` fails on these strategies while preparing its first
    batch, before any callback runs; call this right after ``compile`` to get
    this message instead of Keras's "Attempt to convert a value (PerReplica...)".

    Args:
        model: a ``keras.Model`` (its ``distribute_strategy`` is checked).

    Returns:
        None.

    Example:
        >>> from keras_dynloss.distribute import check_fit_strategy
        >>> with strategy.scope():
        ...     model.compile(optimizer="sgd", loss=kd.DynamicalLoss(...))
        >>> check_fit_strategy(model)   # RuntimeError on 2 workers
    """
    if not isinstance(model, keras.Model):
        raise invalid("model", "a keras.Model", model)
    strategy = model.distribute_strategy
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        what = "ParameterServerStrategy"
        why = ("Keras 3 has no `ClusterCoordinator` support; keras_dynloss is tested "
               "on several workers with MultiWorkerMirroredStrategy only")
    elif isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        workers = _num_workers(strategy)
        if workers == 1:
            return
        what = f"MultiWorkerMirroredStrategy with {workers} workers"
        why = ("keras-team/keras#20585: it fails with \"Attempt to convert a value "
               "(PerReplica...)\"")
    else:
        return
    raise RuntimeError(
        f"Keras's `fit` / `evaluate` cannot run {what} ({why}). {RECIPE}"
    )
