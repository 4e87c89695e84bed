"""A dynamical loss on several workers: a tf.distribute custom training loop.

Keras 3's ``model.fit`` cannot run ``MultiWorkerMirroredStrategy`` with several
workers (keras-team/keras#20585), so this is the recipe: a ``strategy.run`` step
that averages the per-sample dynamical loss over the *global* batch, with Γ read
from ``optimizer.iterations`` (one count per update, the same on every worker).
The weights equal those of one process training on the same global batches.

One process (no ``TF_CONFIG``: a single worker)::

    python examples/multiworker_custom_loop.py

Two workers on one machine: the same command in two shells, index 0 and 1
(worker 0 is the chief; on several machines use their addresses)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:20000", "127.0.0.1:20001"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/multiworker_custom_loop.py
"""

import argparse
import json
import os

import keras
import numpy as np
import tensorflow as tf

import keras_dynloss as kd
from keras_dynloss.distribute import compute_average_loss


def make_dataset_fn(x, y, global_batch_size, seed):
    """Per-worker input: one seeded shuffle, sharded, so that the workers' batches
    of step k together are exactly the global batch k of a single process."""

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(x), seed=seed).repeat()  # same seed on every worker
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        return ds.batch(batch_size, drop_remainder=True).prefetch(2)

    return dataset_fn


def make_model(num_classes, seed):
    keras.utils.set_random_seed(seed)  # the same initial weights on every worker
    return keras.Sequential([
        keras.Input((2,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(num_classes),
    ])


def train(strategy, *, steps, global_batch_size=60, learning_rate=0.5, amplitude=30.0,
          period=20, seed=0, log_every=0):
    """Trains the spiral classifier for ``steps`` updates; returns the model."""
    x, y = kd.datasets.spiral()
    num_classes = 3
    with strategy.scope():  # variables are mirrored on every replica of every worker
        model = make_model(num_classes, seed)
        optimizer = keras.optimizers.SGD(learning_rate)
        optimizer.build(model.trainable_variables)
        loss = kd.DynamicalLoss(num_classes, amplitude=amplitude, period=period,
                                from_logits=True, reduction="none").bind(optimizer)
    dataset = strategy.distribute_datasets_from_function(
        make_dataset_fn(x, y, global_batch_size, seed))

    def step_fn(x_batch, y_batch):  # runs on each replica with its share of the batch
        with tf.GradientTape() as tape:
            logits = model(x_batch, training=True)
            value = compute_average_loss(loss, y_batch, logits,
                                         global_batch_size=global_batch_size)
            if model.losses:
                value += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # sums over replicas
        return value

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(step_fn, args=next(iterator))
        return strategy.reduce("SUM", per_replica, axis=None)  # the global-batch loss

    iterator = iter(dataset)
    for t in range(1, steps + 1):
        value = train_step(iterator)
        if log_every and t % log_every == 0:  # Γ of the update just made, at step t - 1
            gamma = np.round(loss.weights_at(t - 1), 3)
            print(f"step {t}: dynamical loss {float(value):.4f}, Γ {gamma}", flush=True)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--global-batch-size", type=int, default=60)
    parser.add_argument("--save-weights", metavar="PATH",
                        help="write the final weights to PATH (.npz); '{task_id}' in "
                             "PATH is replaced by this worker's index")
    args = parser.parse_args(argv)
    task_id = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG
    model = train(strategy, steps=args.steps, global_batch_size=args.global_batch_size,
                  log_every=50 if task_id == 0 else 0)
    if args.save_weights:
        np.savez(args.save_weights.format(task_id=task_id), *model.get_weights())


if __name__ == "__main__":
    main()
