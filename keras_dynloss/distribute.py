"""Dynamical losses under `tf.distribute`: the custom-loop helper and the `fit` check (where
`fit` cannot run, see the guide "Several devices and workers")."""

import keras
import tensorflow as tf

from keras_dynloss._checks import check_int, invalid
from keras_dynloss.losses import _DynamicalBase

__all__ = ["check_fit_strategy", "compute_average_loss"]


def compute_average_loss(loss, y_true, y_pred, *, global_batch_size, sample_weight=None):
    """One replica's share of the dynamical loss, averaged over the global batch.

    `L_r = (1/B) Σ_{μ ∈ R} w_μ Γ_{y_μ}(t) ℓ(y_μ, f(x_μ))` over this replica's samples `R`
    (B: all replicas' samples); the all-reduce sums the `L_r`. Call it inside `strategy.run`.

    Args:
        loss: a dynamical loss built with `reduction="none"` and bound to the optimizer
            (`loss.bind(optimizer)`: Γ follows `optimizer.iterations`) or to a step.
        y_true: this replica's labels, shape (b,) / (b, 1) or one-hot (b, C).
        y_pred: this replica's outputs, shape (b, C).
        global_batch_size: B, a positive int (or an integer scalar tensor when the last
            batch is partial).
        sample_weight: optional per-sample weights, shape (b,).

    Example:
        >>> loss = kd.DynamicalLoss(3, amplitude=70, period=500, reduction="none")
        >>> loss.bind(optimizer)
        >>> with tf.GradientTape() as tape:  # inside the function that strategy.run runs
        ...     value = compute_average_loss(loss, y, model(x), global_batch_size=64)
    """
    if not isinstance(loss, _DynamicalBase):
        raise invalid("loss", "a keras_dynloss dynamical loss", loss)
    if loss.reduction != "none":
        raise invalid("loss", 'a dynamical loss built with reduction="none" (per-sample values, '
                      f"averaged here over the global batch); this one has "
                      f"reduction={loss.reduction!r}", loss)
    if loss.step is None:
        raise RuntimeError(
            f"{type(loss).__name__} '{loss.name}' has no training step to follow. In a custom "
            "loop bind it to the optimizer once, before training: `loss.bind(optimizer)` "
            "(Γ then follows `optimizer.iterations`).")
    if not tf.is_tensor(global_batch_size):
        global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    per_sample = loss(y_true, y_pred, sample_weight=sample_weight)
    return tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch_size)


def check_fit_strategy(model):
    """Raises `RuntimeError` if Keras's `fit` cannot run the model's strategy (several-worker
    `MultiWorkerMirroredStrategy`, `ParameterServerStrategy`); call it right after `compile`.

    Example:
        >>> with strategy.scope():
        ...     model.compile(optimizer="sgd", loss=kd.DynamicalLoss(...))
        >>> check_fit_strategy(model)   # RuntimeError on 2 workers
    """
    if not isinstance(model, keras.Model):
        raise invalid("model", "a keras.Model", model)
    strategy = model.distribute_strategy
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        what = "ParameterServerStrategy"
        why = ("Keras 3 has no `ClusterCoordinator` support; keras_dynloss is tested on several "
               "workers with MultiWorkerMirroredStrategy only")
    elif isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
        workers = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
        if workers <= 1:
            return
        what = f"MultiWorkerMirroredStrategy with {workers} workers"
        why = 'keras-team/keras#20585: it fails with "Attempt to convert a value (PerReplica...)"'
    else:
        return
    raise RuntimeError(
        f"Keras's `fit` / `evaluate` cannot run {what} ({why}). Train with a custom loop "
        "instead: `strategy.run` a step whose loss is `keras_dynloss.distribute."
        "compute_average_loss(loss, y, logits, global_batch_size=...)`, with "
        '`loss = DynamicalLoss(..., reduction="none").bind(optimizer)` (recipe: '
        "examples/multiworker_custom_loop.py, docs/guide/distributed.md).")
