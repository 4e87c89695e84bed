"""Amplitude x period on Fashion-MNIST: a wide MLP or a Myrtle-style CNN fits a small
class-balanced subset with minibatch SGD; Γ(t) has a period of P epochs, the last P static.
A = 1 (cross-entropy) is trained once per seed (`period` None), the baseline of every cell.
"""

import math
import time

import numpy as np

from keras_dynloss._checks import check_choice, invalid
from keras_dynloss.experiments import sweep

__all__ = ["run", "load_data", "build_model", "table", "write", "DEFAULTS", "MYRTLE_DEFAULTS",
           "QUICK"]

DEFAULTS = dict(amplitudes=(1.0, 10.0, 100.0), periods=(1, 2, 5), seeds=(0, 1, 2), width=512,
                train_size=2000, test_size=10000, epochs=60, batch_size=50, learning_rate=0.1,
                momentum=0.0, data="auto", model="auto")
#: The defaults of the Myrtle CNN: 1000 images (100 per class) for a 28k-parameter CNN.
MYRTLE_DEFAULTS = dict(DEFAULTS, seeds=(0, 1, 2, 3), width=32, train_size=1000, batch_size=25,
                       learning_rate=0.05, momentum=0.9)
QUICK = dict(amplitudes=(1.0, 10.0), periods=(1,), seeds=(0,), width=32, train_size=200,
             test_size=200, epochs=2, batch_size=50, learning_rate=0.05, momentum=0.0)
GRID, HYPER = ("amplitudes", "periods", "seeds"), ("width", "epochs", "batch_size",
                                                   "learning_rate", "momentum")
CELL = ("period", "amplitude")
METRICS = {"test_acc": "test accuracy", "train_acc": "training accuracy"}
#: Test images of the per-epoch test curves (the final test accuracy uses all of them).
CURVE_TEST_SIZE = 2000


def load_data(source="auto", *, train_size=2000, test_size=10000, seed=0, flatten=True):
    """Class-stratified subsets `((x_train, y_train), (x_test, y_test), source_used)`.

    Args:
        source: "auto", "keras", "idx" or "tfds" (`datasets.fashion_mnist`'s), or "tfds:NAME"
            for any TFDS image classification set.
        train_size, test_size, seed: subset sizes (a test size of at least the split's: all of
            it) and their seed.
        flatten: images as vectors (for the MLP), else (H, W) or (H, W, C).
    """
    from keras_dynloss import datasets

    if source.startswith("tfds:"):
        name = source[len("tfds:"):]
        train = datasets.tfds_dataset(name, "train", num_samples=train_size, seed=seed,
                                      flatten=flatten)
        x, y = datasets.tfds_dataset(name, "test", seed=seed, flatten=flatten)
        if test_size < len(x):
            x, y = datasets.subsample(x, y, test_size, seed=seed)
        return train, (x, y), f"tfds {name}"
    *train, used = datasets.fashion_mnist("train", source=source, num_samples=train_size,
                                          seed=seed, flatten=flatten, return_source=True)
    test = datasets.fashion_mnist("test", source=used, seed=seed, flatten=flatten,
                                  num_samples=None if test_size >= 10000 else test_size)
    return tuple(train), test, f"Fashion-MNIST ({used})"


def build_model(kind, input_shape, num_classes, width):
    """"mlp": Dense(width)-ReLU-Dense(C) on flattened inputs. "myrtle": a Myrtle-style CNN as
    in the paper (four 3x3 conv-ReLU layers of `width` filters, He-normal kernels, 2x2
    average pooling after the second and third, global average pooling, Dense(C))."""
    import keras

    layers = keras.layers
    if kind == "mlp":
        return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                                 layers.Dense(width, activation="relu"),
                                 layers.Dense(num_classes)])
    conv = dict(kernel_size=3, padding="same", activation="relu", kernel_initializer="he_normal")
    return keras.Sequential([
        keras.Input(input_shape if len(input_shape) == 3 else (*input_shape, 1)),
        layers.Conv2D(width, **conv), layers.Conv2D(width, **conv), layers.AveragePooling2D(2),
        layers.Conv2D(width, **conv), layers.AveragePooling2D(2), layers.Conv2D(width, **conv),
        layers.GlobalAveragePooling2D(), layers.Dense(num_classes)])


def _one(*, x_train, y_train, x_test, y_test, amplitude, period, seed, width, epochs,
         batch_size, learning_rate, momentum, model_kind, num_classes):
    import keras

    import keras_dynloss as kd

    keras.utils.set_random_seed(seed)
    if model_kind == "myrtle" and x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    model = build_model(model_kind, x_train.shape[1:], num_classes, width)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    loss = kd.DynamicalLoss(num_classes, amplitude=amplitude, period=1, from_logits=True,
                            static_after=steps_per_epoch * (epochs - (period or 0)))
    ce = keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum), loss=loss,
                  metrics=["accuracy", ce], steps_per_execution=steps_per_epoch)
    curve_test = (kd.datasets.subsample(x_test, y_test, CURVE_TEST_SIZE, seed=1)
                  if len(x_test) > CURVE_TEST_SIZE else (x_test, y_test))
    start = time.perf_counter()
    history = model.fit(  # a fresh permutation of the training set every epoch
        x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=True,
        validation_data=curve_test, validation_batch_size=1000, verbose=0,
        callbacks=[kd.DynamicalLossScheduler(period_epochs=period or 1, log_weights=False)])
    seconds = time.perf_counter() - start

    def accuracy(x, y):
        return float(np.mean(np.argmax(model.predict(x, batch_size=1000, verbose=0), -1) == y))

    h = history.history
    return dict(amplitude=amplitude, period=period, seed=seed,
                train_acc=accuracy(x_train, y_train), test_acc=accuracy(x_test, y_test),
                final_train_loss=float(h["loss"][-1]), seconds=seconds,
                curves=dict(loss=h["loss"], train_ce=h["ce"], train_acc=h["accuracy"],
                            test_ce=h["val_ce"], test_acc=h["val_accuracy"]))


def run(*, out=None, resume=False, processes=None, progress=True, **options):
    """Trains the grid and returns the JSON-ready result.

    Args:
        out, resume, processes, progress: as for `sweep.run` (`out/overparam.jsonl`).
        **options: over `DEFAULTS` (`MYRTLE_DEFAULTS` for the CNN): `amplitudes` (A values;
            1: cross-entropy, trained once per seed), `periods` (in epochs, each < `epochs`),
            `seeds` (of weights and shuffling; the data subsets are fixed, seed 0), `width`
            (hidden units or CNN filters per layer), `train_size`, `test_size`, `epochs`,
            `batch_size`, `learning_rate`, `momentum` (minibatch SGD), `data` (`load_data`'s
            `source`), `model`: "mlp", "myrtle" (`build_model`; inputs standardised with the
            training subset's pixel mean and std) or "auto" (the CNN for "tfds:NAME").

    Returns:
        `sweep.result`'s dict; rows `{amplitude, period, seed, train_acc, test_acc,
        final_train_loss, seconds, curves, git_commit}`, `curves` per epoch: `loss`, `train_ce`,
        `train_acc` (over each epoch's batches), `test_ce`, `test_acc` (`CURVE_TEST_SIZE` images).
    """
    model = check_choice("model", options.get("model", "auto"), ("auto", "mlp", "myrtle"))
    if model == "auto":
        model = "myrtle" if options.get("data", "auto").startswith("tfds:") else "mlp"
    cfg = sweep.options(MYRTLE_DEFAULTS if model == "myrtle" else DEFAULTS, options)
    if any(p >= cfg["epochs"] for p in cfg["periods"]):
        raise invalid("periods", f"periods < epochs={cfg['epochs']}", tuple(cfg["periods"]))
    (x_tr, y_tr), (x_te, y_te), source = load_data(cfg["data"], flatten=model == "mlp", **{
        k: cfg[k] for k in ("train_size", "test_size")})
    if len(x_tr) < cfg["batch_size"]:
        raise invalid("train_size", f"at least batch_size={cfg['batch_size']} images", len(x_tr))
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    preprocessing = "pixels in [0, 1]"
    if model == "myrtle":
        mean, std = float(x_tr.mean()), float(x_tr.std())
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        preprocessing = f"(x - {mean:.4f}) / {std:.4f} (training-subset pixel mean, std)"
    width, momentum = cfg["width"], cfg["momentum"]
    hyper = {k: cfg[k] for k in HYPER}
    settings = dict(
        hyper, train_size=len(x_tr), test_size=len(x_te), data=source, preprocessing=preprocessing,
        model=(f"Dense({width})-ReLU-Dense({num_classes})" if model == "mlp"
               else f"Myrtle CNN, width {width}"),
        parameters=int(build_model(model, x_tr.shape[1:], num_classes, width).count_params()),
        optimizer="SGD minibatch" + (f", momentum {momentum:g}" if momentum else ""),
        static="the last `period` epochs", curve_test_size=min(len(x_te), CURVE_TEST_SIZE))
    common = dict(hyper, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                  model_kind=model, num_classes=num_classes)
    periods = cfg["periods"]
    jobs = [dict(common, amplitude=float(a), period=None if a == 1 else int(p), seed=int(s))
            for a in cfg["amplitudes"] for p in (periods[:1] if a == 1 else periods)
            for s in cfg["seeds"]]
    runs = sweep.run(_one, jobs, name="overparam", settings=settings, key=(*CELL, "seed"),
                     out=out, resume=resume, processes=processes, progress=progress)
    return sweep.result("overparam", runs, cell=CELL, metrics=METRICS,
                        config=dict(settings, **{k: list(cfg[k]) for k in GRID}),
                        baseline=lambda cell: (None, 1.0), tested=["test_acc"])


def table(result):
    """Markdown: a line per (A, period), then each test-accuracy test against cross-entropy."""
    return sweep.table(result, ["A", "period (epochs)"], lambda d: (
        ["1 (CE)", "any"] if d["amplitude"] == 1 else [f"{d['amplitude']:g}", str(d["period"])]))


def write(result, out):
    """Writes `overparam.json`, `.md` and `.png` (each seed a dot, the medians per (A, period):
    `keras_dynloss.plot.sweep`) into `out`; returns the paths."""
    from keras_dynloss import plot

    cfg = result["config"]
    return sweep.write(result, out, "overparam", text=table(result), figure=lambda: plot.sweep(
        result, title=f"{cfg['data']}: {cfg['train_size']} training images, {cfg['model']}, "
                      f"{cfg['epochs']} epochs",
        series_label=lambda a: "cross-entropy" if a == 1 else f"A={a:g}"))
