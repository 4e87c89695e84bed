"""TensorBoard scalars keyed by `optimizer.iterations` (Keras's `TensorBoard` callback keys
batch scalars by its own count), written beside every `TensorBoard` callback of the call."""

import os

import keras

from keras_dynloss import _compat


def log_dirs(callback, log_dir=None):
    """The `train` folders of `log_dir` and of every `TensorBoard` running beside `callback`."""
    dirs = [] if log_dir is None else [os.fspath(log_dir)]
    dirs += [other.log_dir for other in _compat.sibling_callbacks(callback)
             if isinstance(other, keras.callbacks.TensorBoard)]
    return list(dict.fromkeys(os.path.join(d, "train") for d in dirs))


class ScalarWriter:
    """Writes `{tag: value}` rows at given steps into one event file in each of `dirs`."""

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
