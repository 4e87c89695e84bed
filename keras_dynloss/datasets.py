"""Datasets as NumPy `(x, y)`: `x` float32 (images in [0, 1]; the spiral also float64), `y`
int32 labels. `digits` and `tfds_dataset` need `pip install "keras_dynloss[datasets]"`."""

import gzip
import os
import socket

import numpy as np

from keras_dynloss._checks import check_choice, check_int, check_number, invalid

__all__ = ["spiral", "fashion_mnist", "read_idx", "subsample", "digits", "tfds_dataset",
           "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIRS", "FASHION_MNIST_SOURCES"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Where `fashion_mnist` looks for IDX files (after `$KERAS_DYNLOSS_FASHION_MNIST`): Debian's.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
#: The sources of `fashion_mnist`, in the order "auto" tries them.
FASHION_MNIST_SOURCES = ("keras", "idx", "tfds")
_DATASETS_EXTRA = 'pip install "keras_dynloss[datasets]"'
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}


def spiral(points_per_class=100, num_classes=3, revolutions=4, noise=0.2, seed=0, *,
           dtype="float32"):
    """The authors' spiral: `C` noisy arms of `N` points in the plane, arm by arm.

    Arm `j`: `(r cos θ, r sin θ)`, `r = linspace(0, 1, N)`, `θ = linspace(2πj/C, 2πj/C +
    revolutions·π, N) + noise · randn(N)` after `np.random.seed(seed)`, as the authors do.

    Args:
        points_per_class: N (>= 1).
        num_classes: C (>= 2).
        revolutions: angle span of each arm in units of π (the paper's 4).
        noise: standard deviation of the angular noise (>= 0).
        seed: seed passed to `np.random.seed`.
        dtype: "float32" or "float64" (the authors' points exactly), the dtype of `x`.

    Example:
        >>> x, y = spiral(dtype="float64")
        >>> x.shape, x.dtype, y.shape
        ((300, 2), dtype('float64'), (300,))
    """
    n = check_int("points_per_class", points_per_class, minimum=1)
    c = check_int("num_classes", num_classes, minimum=2)
    revolutions = check_number("revolutions", revolutions, minimum=0)
    noise = check_number("noise", noise, minimum=0)
    seed = check_int("seed", seed, minimum=0)
    if str(dtype) not in ("float32", "float64") and dtype not in (np.float32, np.float64):
        raise invalid("dtype", "'float32' or 'float64'", dtype)
    np.random.seed(seed)
    r = np.linspace(0.0, 1, n)
    arms = []
    for j in range(c):
        t = (np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + revolutions * np.pi, n)
             + np.random.randn(n) * noise)
        arms.append(np.c_[r * np.cos(t), r * np.sin(t)])
    return np.concatenate(arms).astype(dtype), np.repeat(np.arange(c, dtype="int32"), n)


def read_idx(path):
    """An IDX file (gzipped or not) as a NumPy array of the file's dtype and shape."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic number {data[:4]!r}).")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype, count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def _from_keras(split):
    """Keras's cached copy, else its download (only if the host answers: offline, no wait)."""
    import keras

    home = os.environ.get("KERAS_HOME", os.path.expanduser(os.path.join("~", ".keras")))
    if not os.path.isdir(os.path.join(home, "datasets", "fashion-mnist")):
        socket.create_connection(("storage.googleapis.com", 443), timeout=5).close()
    train, test = keras.datasets.fashion_mnist.load_data()
    return train if split == "train" else test


def _from_idx(split, directory=None):
    prefix = "train" if split == "train" else "t10k"
    env = os.environ.get("KERAS_DYNLOSS_FASHION_MNIST")
    folders = [directory] if directory else ([env] if env else []) + list(FASHION_MNIST_DIRS)
    for folder in folders:
        stems = [os.path.join(folder, f"{prefix}-{kind}-ubyte")
                 for kind in ("images-idx3", "labels-idx1")]
        paths = [next((p for p in (s, s + ".gz") if os.path.exists(p)), None) for s in stems]
        if all(paths):
            x, y = read_idx(paths[0]), read_idx(paths[1])
            if len(x) != len(y):
                raise ValueError(f"{paths[0]} and {paths[1]} hold {len(x)} and {len(y)} items.")
            return x, y
    raise FileNotFoundError(f"no {prefix}-images-idx3-ubyte[.gz] and "
                            f"{prefix}-labels-idx1-ubyte[.gz] in {folders}")


def fashion_mnist(split="train", *, source="auto", directory=None, num_samples=None, seed=0,
                  flatten=False, return_source=False):
    """Fashion-MNIST from the first source that has it ("auto"): "keras" (cache or download),
    "idx" (`$KERAS_DYNLOSS_FASHION_MNIST` or `FASHION_MNIST_DIRS`), "tfds".

    Args:
        split: "train" (60000 images) or "test" (10000).
        source: "auto" or one of the sources.
        directory: a folder of IDX files; given, it is the only source.
        num_samples: a class-stratified random subset of this size (`subsample`).
        seed: seed of the subset.
        flatten: `x` of shape (n, 784) instead of (n, 28, 28).
        return_source: also return the name of the source used.

    Returns:
        `(x, y)` (and the source): `x` of shape (n, 28, 28) or (n, 784), `y` in [0, 10).

    Example:
        >>> x, y = fashion_mnist("test", num_samples=1000, flatten=True)
        >>> x.shape, y.dtype
        ((1000, 784), dtype('int32'))
    """
    check_choice("split", split, ("train", "test"))
    check_choice("source", source, ("auto", *FASHION_MNIST_SOURCES))
    loaders = {"keras": _from_keras, "idx": lambda split: _from_idx(split, directory),
               "tfds": lambda split: tfds_dataset("fashion_mnist", split)}
    names = ("idx",) if directory is not None else (
        FASHION_MNIST_SOURCES if source == "auto" else (source,))
    errors = []
    for name in names:
        try:
            x, y = loaders[name](split)
            break
        except Exception as err:  # noqa: BLE001 - each source's failure goes in the message
            errors.append(f"{name}: {type(err).__name__}: {err}")
    else:
        raise FileNotFoundError(
            "Fashion-MNIST: no source worked. Keras's download needs the network once (then "
            "it is cached); Debian's IDX files: apt-get install dataset-fashion-mnist, or "
            "$KERAS_DYNLOSS_FASHION_MNIST set to a folder of the four IDX files; TFDS: "
            f'{_DATASETS_EXTRA}. Tried:\n  ' + "\n  ".join(errors))
    x, y = _finish(np.reshape(x, (-1, 28, 28)), y, num_samples, seed, flatten)
    return (x, y, name) if return_source else (x, y)


def _finish(x, y, num_samples, seed, flatten):
    """The subset, uint8 images scaled to float32 [0, 1], int32 labels, flattened if asked."""
    x, y = np.asarray(x), np.asarray(y).astype("int32")
    if num_samples is not None:
        x, y = subsample(x, y, num_samples, seed=seed)
    x = x.astype("float32") / 255.0 if x.dtype == np.uint8 else x.astype("float32")
    return (x.reshape(len(x), -1) if flatten else x), y


def subsample(x, y, num_samples, *, seed=0):
    """A class-stratified random subset of `num_samples` items, in shuffled order.

    Each of the C classes gets `num_samples // C` items (the first classes one more for the
    remainder), drawn without replacement with `np.random.default_rng(seed)`.

    Example:
        >>> x, y = subsample(np.arange(10), np.repeat([0, 1], 5), 4)
        >>> np.bincount(y)
        array([2, 2])
    """
    classes = np.unique(y)
    num_samples = check_int("num_samples", num_samples, minimum=len(classes), maximum=len(y))
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), num_samples // len(classes))
    per_class[: num_samples % len(classes)] += 1
    idx = []
    for c, k in zip(classes, per_class):
        members = np.flatnonzero(y == c)
        if k > len(members):
            raise invalid("num_samples", f"at most {len(members)} items per class", num_samples)
        idx.append(rng.choice(members, size=k, replace=False))
    idx = rng.permutation(np.concatenate(idx))
    return x[idx], y[idx]


def digits(*, flatten=False):
    """scikit-learn's 8x8 handwritten digits: `x` float32 in [0, 1] of shape (1797, 8, 8) (or
    (1797, 64) with `flatten`), `y` int32 of shape (1797,), 10 classes."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(f"digits() needs scikit-learn: {_DATASETS_EXTRA}.") from err
    d = load_digits()
    return _finish(d.images / 16.0, d.target, None, 0, flatten)


def tfds_dataset(name, split="train", *, num_samples=None, image_key="image",
                 label_key="label", data_dir=None, download=True, seed=0, flatten=False):
    """A TensorFlow Datasets set as NumPy arrays, through `tfds.load`.

    Args:
        name: the TFDS name, e.g. "fashion_mnist", "mnist", "cifar10".
        split: a TFDS split ("train", "test", "train[:10%]").
        num_samples: a class-stratified subset of this size (`subsample`).
        image_key: the feature holding the inputs.
        label_key: the feature holding the labels.
        data_dir: the TFDS data folder.
        download: let TFDS download and prepare the data if missing.
        seed: seed of the subset.
        flatten: each input as a vector.

    Example:
        >>> x, y = tfds_dataset("fashion_mnist", "test", num_samples=1000)
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(f"TFDS datasets need tensorflow-datasets: {_DATASETS_EXTRA}.") from err
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
    chunks = list(tfds.as_numpy(ds.batch(10000)))
    if not chunks:
        raise ValueError(f"TFDS split {name!r}/{split!r} is empty.")
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    for arg, key in (("image_key", image_key), ("label_key", label_key)):
        if key not in arrays:
            raise invalid(arg, f"a feature of {name!r} ({', '.join(sorted(arrays))})", key)
    return _finish(arrays[image_key], arrays[label_key], num_samples, seed, flatten)
