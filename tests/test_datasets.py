"""Datasets: the authors' spiral bit for bit; Fashion-MNIST from Keras (mocked), IDX files or
TFDS (mocked), in that order; digits; TFDS."""

import gzip
import os
import socket
import sys

import numpy as np
import pytest

from keras_dynloss import datasets

pytestmark = pytest.mark.multi_backend


def authors_spiral(N=100, C=3, revolutions=4, noise=0.2, seed=0):
    """The construction of the authors' notebook, written out independently."""
    np.random.seed(seed)
    X = np.zeros((N * C, 2))
    Y = np.zeros(N * C, dtype="uint8")
    for j in range(C):
        ix = range(N * j, N * (j + 1))
        r = np.linspace(0.0, 1, N)
        t = np.linspace(j * 2 * np.pi / C, j * 2 * np.pi / C + revolutions * np.pi, N) \
            + np.random.randn(N) * noise
        X[ix] = np.c_[r * np.cos(t), r * np.sin(t)]
        Y[ix] = j
    return X, Y


@pytest.mark.parametrize("kwargs", [{}, dict(points_per_class=37, num_classes=5,
                                             revolutions=2.5, noise=0.05, seed=7)])
def test_spiral_is_the_authors_construction(kwargs):
    x, y = datasets.spiral(**kwargs)
    ref_x, ref_y = authors_spiral(
        kwargs.get("points_per_class", 100), kwargs.get("num_classes", 3),
        kwargs.get("revolutions", 4), kwargs.get("noise", 0.2), kwargs.get("seed", 0))
    assert x.dtype == np.float32 and x.shape == ref_x.shape
    np.testing.assert_array_equal(x, ref_x.astype("float32"))
    np.testing.assert_array_equal(y, ref_y)
    assert np.issubdtype(y.dtype, np.integer)


def test_spiral_float64_is_the_authors_points_exactly():
    # The authors computed (and trained on) float64 points: dtype="float64" must
    # give them bit for bit, not float32 points widened back to float64.
    x64, y = datasets.spiral(dtype="float64")
    ref_x, ref_y = authors_spiral()
    assert x64.dtype == np.float64
    np.testing.assert_array_equal(x64, ref_x)
    np.testing.assert_array_equal(y, ref_y)
    x32, _ = datasets.spiral()
    assert np.any(x32.astype(np.float64) != x64)  # float32 rounding is visible
    np.testing.assert_array_equal(x32, x64.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float16", "int32", None, "nonsense"])
def test_spiral_rejects_other_dtypes(dtype):
    with pytest.raises(ValueError, match="Invalid value for argument `dtype`: expected "
                                         "'float32' or 'float64'"):
        datasets.spiral(dtype=dtype)


def test_spiral_known_values_and_seed():
    x, y = datasets.spiral()
    assert x.shape == (300, 2) and y.shape == (300,)
    np.testing.assert_array_equal(np.bincount(y), [100, 100, 100])
    # First arm, second point: r = 1/99, θ = 4π/99 + 0.2·(second randn draw of seed 0).
    theta = 4 * np.pi / 99 + 0.2 * 0.4001572083672233
    np.testing.assert_allclose(x[1], [np.cos(theta) / 99, np.sin(theta) / 99], rtol=1e-6)
    assert not np.array_equal(datasets.spiral(seed=1)[0], x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=1), "num_classes"),
    (dict(points_per_class=0), "points_per_class"),
    (dict(noise=-1.0), "noise"),
    (dict(seed=-1), "seed"),
])
def test_spiral_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.spiral(**kwargs)


def _write_idx(path, array, compress):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += np.asarray(array.shape, ">u4").tobytes()
    data = header + array.tobytes()
    if compress:
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 3)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    x, y = datasets.fashion_mnist("test", directory=str(tmp_path))
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, images / np.float32(255))
    np.testing.assert_array_equal(y, labels)
    xf, yf = datasets.fashion_mnist("test", directory=str(tmp_path), num_samples=20,
                                    flatten=True)
    assert xf.shape == (20, 784)
    np.testing.assert_array_equal(np.bincount(yf, minlength=10), [2] * 10)
    # Every subset row is one of the original images with its own label.
    for row, label in zip(xf, yf):
        k = np.flatnonzero((x.reshape(30, -1) == row).all(1))
        assert k.size == 1 and y[k[0]] == label


def test_read_idx_big_endian_ints(tmp_path):
    arr = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    _write_idx(tmp_path / "a", arr, False)
    out = datasets.read_idx(str(tmp_path / "a"))
    np.testing.assert_array_equal(out, [[-3, -2, -1], [0, 1, 2]])


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(str(tmp_path / "bad"))


@pytest.mark.skipif(not os.path.isdir(datasets.FASHION_MNIST_DIRS[0]),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_files():
    x, y = datasets.fashion_mnist("test", source="idx")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert 0.0 <= x.min() and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    np.testing.assert_array_equal(y[:5], [9, 2, 1, 1, 6])


def test_subsample_rejects_too_many():
    x, y = np.zeros((10, 1)), np.repeat([0, 1], 5)
    with pytest.raises(ValueError, match="num_samples"):
        datasets.subsample(x, y, 11)


def test_digits():
    x, y = datasets.digits(flatten=True)
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert x.max() == 1.0 and set(np.unique(y)) == set(range(10))


def test_tfds_dataset_with_mock_data():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):
        x, y = datasets.tfds_dataset("fashion_mnist", "train")
        assert x.shape == (40, 28, 28, 1) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < 10
        xf, _ = datasets.tfds_dataset("fashion_mnist", "train", flatten=True)
        np.testing.assert_array_equal(xf, x.reshape(40, -1))
        with pytest.raises(ValueError, match="label_key"):
            datasets.tfds_dataset("fashion_mnist", "train", label_key="nope")


def test_tfds_dataset_without_tfds_names_the_extra(no_tfds):
    with pytest.raises(ImportError, match=r'pip install "keras_dynloss\[datasets\]"'):
        datasets.tfds_dataset("mnist")


# -- Fashion-MNIST's sources: Keras, IDX files, TFDS ------------------------------------------

def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, no Keras cache, no IDX files: every source fails unless a test adds one."""
    def no_network(*args, **kwargs):
        raise OSError("no network (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("KERAS_DYNLOSS_FASHION_MNIST", raising=False)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    return tmp_path


@pytest.fixture
def no_tfds(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError


def _keras_cache(monkeypatch, home, train, test):
    """Keras's cached copy (mocked loader), as `keras.datasets.fashion_mnist` returns it."""
    import keras

    os.makedirs(home / "keras_home" / "datasets" / "fashion-mnist")
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: (train, test))


def _idx_folder(folder, split, images, labels):
    folder.mkdir(exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, True)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8), True)


def test_fashion_mnist_keras_first(offline, no_tfds, monkeypatch):
    train, test = _images(20, 0), _images(10, 1)
    _keras_cache(monkeypatch, offline, train, test)
    _idx_folder(offline / "idx", "test", *_images(10, 2))
    monkeypatch.setenv("KERAS_DYNLOSS_FASHION_MNIST", str(offline / "idx"))
    x, y, source = datasets.fashion_mnist("test", return_source=True)
    assert source == "keras"
    np.testing.assert_array_equal(x, test[0] / np.float32(255))
    np.testing.assert_array_equal(y, test[1])
    x, y = datasets.fashion_mnist("train", flatten=True)
    np.testing.assert_array_equal(x, train[0].reshape(20, -1) / np.float32(255))


def test_fashion_mnist_idx_files_without_network(offline, no_tfds, monkeypatch):
    images, labels = _images(10, 2)
    _idx_folder(offline / "idx", "test", images, labels)
    monkeypatch.setenv("KERAS_DYNLOSS_FASHION_MNIST", str(offline / "idx"))
    x, y, source = datasets.fashion_mnist("test", return_source=True)
    assert source == "idx"
    np.testing.assert_array_equal(x, images / np.float32(255))
    np.testing.assert_array_equal(y, labels)


def test_fashion_mnist_tfds_last(offline):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=30):
        x, y, source = datasets.fashion_mnist("train", return_source=True)
        ref_x, ref_y = datasets.tfds_dataset("fashion_mnist", "train")
    assert source == "tfds" and x.shape == (30, 28, 28) and y.dtype == np.int32
    np.testing.assert_array_equal(x, ref_x[..., 0])
    np.testing.assert_array_equal(y, ref_y)


def test_fashion_mnist_error_names_every_source(offline, no_tfds):
    with pytest.raises(FileNotFoundError) as err:
        datasets.fashion_mnist("train")
    message = str(err.value)
    for what in ("keras: OSError: no network", "idx: FileNotFoundError",
                 "tfds: ImportError", "apt-get install dataset-fashion-mnist",
                 "KERAS_DYNLOSS_FASHION_MNIST", 'pip install "keras_dynloss[datasets]"'):
        assert what in message
    with pytest.raises(FileNotFoundError, match="keras: OSError"):
        datasets.fashion_mnist("train", source="keras")


@pytest.mark.parametrize("kwargs, name", [(dict(split="valid"), "split"),
                                          (dict(source="web"), "source")])
def test_fashion_mnist_rejects(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        datasets.fashion_mnist(**kwargs)
