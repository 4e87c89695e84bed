"""Datasets for the paper's experiments: the spiral, Fashion-MNIST, digits, TFDS.

* :func:`spiral`: the authors' 2-d spiral, reproduced bit for bit (same NumPy
  global-RNG calls in the same order).
* :func:`fashion_mnist`: offline, from the IDX files of Debian's
  ``dataset-fashion-mnist`` package (or any folder holding the four IDX files,
  gzipped or not), parsed with NumPy.
* :func:`digits`: scikit-learn's 8x8 digits (``pip install "keras_dynloss[datasets]"``).
* :func:`tfds_dataset`: any TensorFlow Datasets dataset as NumPy arrays
  (``pip install "keras_dynloss[datasets]"``).

All loaders return NumPy arrays ``(x, y)``: ``x`` float32 (scaled to [0, 1] for
images; ``spiral(dtype="float64")`` for float64 points), ``y`` int32 class labels.
"""

import gzip
import os

import numpy as np

from keras_dynloss._checks import check_int, check_number, invalid

__all__ = [
    "spiral",
    "fashion_mnist",
    "digits",
    "tfds_dataset",
    "subsample",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_CLASSES",
]

#: Folders searched by :func:`fashion_mnist` (after ``$KERAS_DYNLOSS_FASHION_MNIST``).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_DATASETS_EXTRA = 'pip install "keras_dynloss[datasets]"'


def spiral(points_per_class=100, num_classes=3, revolutions=4, noise=0.2, seed=0, *,
           dtype="float32"):
    """The authors' spiral: ``C`` noisy arms of ``N`` points in the plane.

    For arm ``j``: ``r = linspace(0, 1, N)``,
    ``θ = linspace(2πj/C, 2πj/C + revolutions·π, N) + noise · randn(N)``,
    points ``(r cos θ, r sin θ)`` with label ``j``. The noise is drawn after
    ``np.random.seed(seed)`` from NumPy's global generator, arm after arm, exactly
    as in the authors' code, so the points are identical to theirs (the global
    NumPy RNG state is changed, as theirs is).

    Args:
        points_per_class: N, points per arm (>= 1).
        num_classes: C, number of arms (>= 2).
        revolutions: angle span of each arm in units of π (the paper's 4).
        noise: standard deviation of the angular noise (>= 0).
        seed: seed passed to ``np.random.seed``.
        dtype: ``"float32"`` or ``"float64"``, the dtype of ``x``. The points are
            always computed in float64 (as the authors' code does) and then cast,
            so ``dtype="float64"`` gives the authors' points exactly.

    Returns:
        ``(x, y)``: ``x`` of ``dtype`` and shape ``(N·C, 2)``, ``y`` int32 of
        shape ``(N·C,)``, arm by arm.

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
    try:
        out_dtype = None if dtype is None else np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype not in (np.float32, np.float64):
        raise invalid("dtype", "'float32' or 'float64'", dtype)
    np.random.seed(seed)
    x = np.zeros((n * c, 2))
    y = np.zeros(n * c, dtype="int32")
    for j in range(c):
        ix = range(n * j, n * (j + 1))
        r = np.linspace(0.0, 1, n)
        t = (
            np.linspace(2 * np.pi * j / c, 2 * np.pi * j / c + revolutions * np.pi, n)
            + np.random.randn(n) * noise
        )
        x[ix] = np.c_[r * np.cos(t), r * np.sin(t)]
        y[ix] = j
    return x.astype(out_dtype), y


# -- Fashion-MNIST from IDX files ------------------------------------------

_IDX_TYPES = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8",
}


def read_idx(path):
    """Reads an IDX file (``.gz`` or plain) into a NumPy array.

    Args:
        path: file path; gzip is detected from the magic bytes, not the name.

    Returns:
        An array of the file's type and shape (e.g. uint8 ``(60000, 28, 28)``).
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(data) - offset < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: expected {count} items of shape {shape}.")
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape).astype(
        dtype.newbyteorder("=")
    )


def _find_idx(directory, stem):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def fashion_mnist(split="train", *, directory=None, num_samples=None, seed=0,
                  flatten=False):
    """Fashion-MNIST from local IDX files (no download).

    Looks in ``directory``, else ``$KERAS_DYNLOSS_FASHION_MNIST``, else
    :data:`FASHION_MNIST_DIRS` (Debian/Ubuntu: ``apt-get install
    dataset-fashion-mnist``) for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (optionally ``.gz``).

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000).
        directory: folder holding the IDX files.
        num_samples: if given, a class-stratified random subset of this size
            (see :func:`subsample`).
        seed: seed of the subset.
        flatten: return ``x`` of shape ``(n, 784)`` instead of ``(n, 28, 28)``.

    Returns:
        ``(x, y)``: ``x`` float32 in [0, 1] of shape ``(n, 28, 28)`` (or
        ``(n, 784)``), ``y`` int32 of shape ``(n,)`` in [0, 10).

    Example:
        >>> x, y = fashion_mnist("test", num_samples=1000, flatten=True)
    """
    if split not in ("train", "test"):
        raise invalid("split", "'train' or 'test'", split)
    prefix = "train" if split == "train" else "t10k"
    candidates = [directory] if directory is not None else (
        [os.environ["KERAS_DYNLOSS_FASHION_MNIST"]]
        if os.environ.get("KERAS_DYNLOSS_FASHION_MNIST") else []
    ) + list(FASHION_MNIST_DIRS)
    for folder in candidates:
        images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images and labels:
            break
    else:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files ({prefix}-images-idx3-ubyte[.gz], "
            f"{prefix}-labels-idx1-ubyte[.gz]) not found in {candidates}. Install "
            "them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "point `directory=` or $KERAS_DYNLOSS_FASHION_MNIST at a folder holding "
            f"them, or use tfds_dataset('fashion_mnist') after `{_DATASETS_EXTRA}`."
        )
    x = read_idx(images)
    y = read_idx(labels).astype("int32")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} and {labels} hold {x.shape[0]} and {y.shape[0]} items.")
    if num_samples is not None:
        x, y = subsample(x, y, num_samples, seed=seed)
    x = x.astype("float32") / 255.0
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return x, y


def subsample(x, y, num_samples, *, seed=0):
    """A class-stratified random subset of ``num_samples`` items (order shuffled).

    Each class gets ``num_samples // C`` items (the remainder goes to the first
    classes), drawn without replacement with ``np.random.default_rng(seed)``.
    """
    classes = np.unique(y)
    num_samples = check_int("num_samples", num_samples, minimum=len(classes),
                            maximum=len(y))
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
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    Args:
        flatten: return ``x`` of shape ``(n, 64)`` instead of ``(n, 8, 8)``.

    Returns:
        ``(x, y)``: ``x`` float32 in [0, 1], ``y`` int32 of shape ``(1797,)``.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"digits() needs scikit-learn: {_DATASETS_EXTRA} (or pip install scikit-learn)."
        ) from err
    d = load_digits()
    x = (d.images / 16.0).astype("float32")
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return x, d.target.astype("int32")


def tfds_dataset(name, split="train", *, num_samples=None, image_key="image",
                 label_key="label", data_dir=None, download=True, seed=0,
                 flatten=False):
    """A TensorFlow Datasets dataset as NumPy arrays, via ``tfds.load``.

    Args:
        name: TFDS name, e.g. ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``.
        split: TFDS split string (``"train"``, ``"test"``, ``"train[:10%]"``).
        num_samples: if given, a class-stratified subset (see :func:`subsample`).
        image_key, label_key: feature names of the inputs and labels.
        data_dir: TFDS data folder.
        download: let TFDS download and prepare the data if missing.
        seed: seed of the subset.
        flatten: flatten each input to a vector.

    Returns:
        ``(x, y)``: ``x`` float32 (uint8 images scaled to [0, 1]), ``y`` int32.

    Example:
        >>> x, y = tfds_dataset("fashion_mnist", "test", num_samples=1000)
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"tfds_dataset() needs tensorflow-datasets: {_DATASETS_EXTRA} "
            "(or pip install tensorflow-datasets)."
        ) from err
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
    # Batches of 10000 concatenated (``batch_size=-1`` aborts on mocked datasets).
    chunks = list(tfds.as_numpy(ds.batch(10000)))
    if not chunks:
        raise ValueError(f"TFDS split {name!r}/{split!r} is empty.")
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    for key in (image_key, label_key):
        if key not in arrays:
            raise invalid(
                "image_key" if key == image_key else "label_key",
                f"a feature of {name!r} ({', '.join(sorted(arrays))})", key,
            )
    x, y = np.asarray(arrays[image_key]), np.asarray(arrays[label_key]).astype("int32")
    if num_samples is not None:
        x, y = subsample(x, y, num_samples, seed=seed)
    x = x.astype("float32") / 255.0 if x.dtype == np.uint8 else x.astype("float32")
    if flatten:
        x = x.reshape(x.shape[0], -1)
    return x, y
