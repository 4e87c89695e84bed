"""TensorBoard scalars keyed by the optimizer step, for the scheduler and the probe.

Keras's `TensorBoard` callback keys its batch-level scalars by its own batch count and
writes only what is in `logs` when its hook runs. Γ(t) and probe values are written here
instead, keyed by `optimizer.iterations`, into the `train` folder of every `TensorBoard`
callback of the same `fit` call (and of an explicit `log_dir`), whatever the callbacks'
order. Needs the `tensorboard` package (`pip install "keras_dynloss[tensorboard]"`).
"""

import os

import keras

from keras_dynloss import _compat

__all__ = []


def log_dirs(callback, log_dir=None):
    """The `train` folders to write into: of `log_dir`, and of every
    `keras.callbacks.TensorBoard` running beside `callback`."""
    dirs = [] if log_dir is None else [os.path.join(os.fspath(log_dir), "train")]
    for other in _compat.sibling_callbacks(callback):
        if isinstance(other, keras.callbacks.TensorBoard):
            dirs.append(os.path.join(other.log_dir, "train"))
    return list(dict.fromkeys(dirs))


class ScalarWriter:
    """Writes `{tag: value}` rows at given steps into TensorBoard event files.

    Args:
        dirs: folders to write into (one event file each).
    """

    def __init__(self, dirs):
        self._writers = []
        if not dirs:
            return
        try:
            import tensorboard  # noqa: F401
            import tensorflow as tf
        except ImportError as error:
            raise ImportError(
                "Writing TensorBoard scalars needs the `tensorboard` package: pip install "
                '"keras_dynloss[tensorboard]" (or pip install tensorboard).') from error
        self._tf = tf
        self._writers = [tf.summary.create_file_writer(d) for d in dirs]

    def __bool__(self):
        return bool(self._writers)

    def write(self, step, values):
        """Writes each `tag: float` of `values` at `step` (an int)."""
        for writer in self._writers:
            with writer.as_default(step=int(step)):
                for tag, value in values.items():
                    self._tf.summary.scalar(tag, float(value))

    def flush(self):
        for writer in self._writers:
            writer.flush()

    def close(self):
        for writer in self._writers:
            writer.close()
        self._writers = []
