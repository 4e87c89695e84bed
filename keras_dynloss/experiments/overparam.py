"""Dynamical loss in the overparameterised regime: amplitude x period on Fashion-MNIST.

A wide MLP (784-width-10, ReLU) fits a small class-balanced subset of
Fashion-MNIST with minibatch SGD; Γ(t) is triangular with period ``P`` epochs
(:class:`~keras_dynloss.DynamicalLossScheduler` with ``period_epochs=P``), cyclic
over the 10 classes, the last ``P`` epochs static. ``A = 1`` is plain
cross-entropy (it does not depend on ``P``: it is trained once per seed and
shown in every column). Reported: final train and test accuracy, mean ± std
over seeds.
"""

import os
import time

import numpy as np

from keras_dynloss.experiments._common import write_json, run_jobs

__all__ = ["run", "table", "plot", "write", "load_data", "DEFAULTS", "QUICK"]

DEFAULTS = dict(amplitudes=(1.0, 10.0, 100.0), periods=(1, 2, 5), seeds=(0, 1, 2),
                width=512, train_size=2000, test_size=10000, epochs=60, batch_size=50,
                learning_rate=0.1)
QUICK = dict(amplitudes=(1.0, 10.0), periods=(1,), seeds=(0,), width=32, train_size=200,
             test_size=200, epochs=2, batch_size=50, learning_rate=0.05)


def load_data(source="auto", *, train_size=2000, test_size=10000, seed=0, flatten=True):
    """Class-stratified subsets ``((x_train, y_train), (x_test, y_test), source_used)``.

    Args:
        source: ``"offline"`` (Fashion-MNIST from Debian's IDX files,
            :func:`~keras_dynloss.datasets.fashion_mnist`), ``"tfds"`` (Fashion-MNIST
            through :func:`~keras_dynloss.datasets.tfds_dataset`), ``"auto"``
            (offline, then TFDS), or ``"tfds:NAME"`` for any TFDS image
            classification set (e.g. ``"tfds:cifar10"``; needs the network or a
            prepared TFDS data folder).
        train_size, test_size: class-stratified subset sizes (``test_size`` at
            least the split's size = all of it).
        seed: subset seed.
        flatten: flatten images to vectors (for the MLP); False keeps (H, W, C).
    """
    from keras_dynloss import datasets

    def tfds_pair(name):
        train = datasets.tfds_dataset(name, "train", num_samples=train_size, seed=seed,
                                      flatten=flatten)
        x_te, y_te = datasets.tfds_dataset(name, "test", seed=seed, flatten=flatten)
        if test_size < len(x_te):
            x_te, y_te = datasets.subsample(x_te, y_te, test_size, seed=seed)
        return train, (x_te, y_te), f"tfds {name}"

    if source.startswith("tfds:"):
        return tfds_pair(source[len("tfds:"):])
    errors = []
    if source in ("auto", "offline"):
        try:
            train = datasets.fashion_mnist("train", num_samples=train_size, seed=seed,
                                           flatten=flatten)
            test = datasets.fashion_mnist(
                "test", num_samples=None if test_size >= 10000 else test_size, seed=seed,
                flatten=flatten)
            return train, test, "offline IDX (dataset-fashion-mnist)"
        except (FileNotFoundError, ValueError) as err:
            if source == "offline":
                raise
            errors.append(str(err))
    try:
        return tfds_pair("fashion_mnist")
    except Exception as err:  # noqa: BLE001 - report both failures
        errors.append(str(err))
        raise RuntimeError("No Fashion-MNIST source worked:\n" + "\n".join(errors)) from err


def build_model(kind, input_shape, num_classes, width):
    """``"mlp"``: Dense(width)-ReLU-Dense(C) on flat inputs. ``"myrtle"``: a
    Myrtle-style CNN as in the paper (4 conv-ReLU blocks of ``width`` 3x3 filters,
    2x2 average pooling after blocks 2 and 3, global average pooling, Dense(C))."""
    import keras

    if kind == "mlp":
        return keras.Sequential([
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(width, activation="relu"),
            keras.layers.Dense(num_classes),
        ])
    if len(input_shape) == 2:
        input_shape = (*input_shape, 1)
    conv = dict(kernel_size=3, padding="same", activation="relu")
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(width, **conv),
        keras.layers.Conv2D(width, **conv),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(width, **conv),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(width, **conv),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes),
    ])


def _one(*, x_train, y_train, x_test, y_test, amplitude, period, seed, width, epochs,
         batch_size, learning_rate, model_kind, num_classes):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    from keras_dynloss import DynamicalLoss, DynamicalLossScheduler

    keras.utils.set_random_seed(seed)
    if model_kind == "myrtle" and x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    model = build_model(model_kind, x_train.shape[1:], num_classes, width)
    steps_per_epoch = len(x_train) // batch_size
    static_after = steps_per_epoch * max(epochs - period, 0)
    loss = DynamicalLoss(num_classes, amplitude=amplitude, period=1, from_logits=True,
                         static_after=static_after)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss,
                  metrics=["accuracy"], steps_per_execution=steps_per_epoch)
    data = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size, drop_remainder=True))
    start = time.perf_counter()
    hist = model.fit(data, epochs=epochs, verbose=0,
                     callbacks=[DynamicalLossScheduler(period_epochs=period,
                                                       log_weights=False)])
    seconds = time.perf_counter() - start

    def acc(x, y):
        logits = model.predict(x, batch_size=2000, verbose=0)
        return float(np.mean(np.argmax(logits, -1) == y))

    return dict(amplitude=float(amplitude), period=int(period), seed=int(seed),
                train_acc=acc(x_train, y_train), test_acc=acc(x_test, y_test),
                final_train_loss=float(hist.history["loss"][-1]), seconds=seconds)


def run(*, amplitudes=DEFAULTS["amplitudes"], periods=DEFAULTS["periods"],
        seeds=DEFAULTS["seeds"], width=512, train_size=2000, test_size=10000, epochs=60,
        batch_size=50, learning_rate=0.1, data="auto", model="auto", processes=None,
        progress=True):
    """Trains the grid and returns the JSON-ready result.

    Args:
        amplitudes: A values (1 = cross-entropy, trained once per seed).
        periods: periods in epochs.
        seeds: weight / shuffling seeds (the data subset is fixed, seed 0).
        width: hidden units.
        train_size, test_size: Fashion-MNIST subset sizes.
        epochs, batch_size, learning_rate: minibatch SGD.
        data: ``"auto"``, ``"offline"``, ``"tfds"`` or ``"tfds:NAME"`` (see
            :func:`load_data`).
        model: ``"mlp"``, ``"myrtle"`` (see :func:`build_model`) or ``"auto"``:
            the MLP for Fashion-MNIST, the Myrtle CNN for ``"tfds:NAME"``.
        processes: worker processes (default ``os.cpu_count()``).
        progress: progress bar.

    Returns:
        A dict with ``config``, ``rows`` ({amplitude, period, seed, train_acc,
        test_acc, ...}; A=1 rows have ``period`` None) and ``summary``.
    """
    if model == "auto":
        model = "myrtle" if data.startswith("tfds:") else "mlp"
    if model not in ("mlp", "myrtle"):
        raise ValueError("Invalid value for argument `model`: expected one of 'auto', 'mlp', "
                         f"'myrtle'. Received: model={model!r}")
    (x_tr, y_tr), (x_te, y_te), source = load_data(data, train_size=train_size,
                                                   test_size=test_size,
                                                   flatten=model == "mlp")
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    if len(x_tr) < batch_size:
        raise ValueError(f"Invalid value for argument `train_size`: expected at least "
                         f"batch_size={batch_size} images. Received: train_size={len(x_tr)}")
    for p in periods:
        if p >= epochs:
            raise ValueError(f"Invalid value for argument `periods`: expected periods < "
                             f"epochs={epochs}. Received: periods={tuple(periods)}")
    common = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, width=width,
                  epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                  model_kind=model, num_classes=num_classes)
    combos = []
    for a in amplitudes:
        for p in ([periods[0]] if a == 1 else periods):
            for s in seeds:
                combos.append((float(a), int(p), int(s)))
    jobs = [dict(common, amplitude=a, period=p, seed=s) for a, p, s in combos]
    start = time.perf_counter()
    rows = run_jobs(_one, jobs, processes=processes, progress=progress, label="overparam")
    for r in rows:
        if r["amplitude"] == 1:
            r["period"] = None
    return dict(
        experiment="overparam",
        config=dict(amplitudes=list(amplitudes), periods=list(periods), seeds=list(seeds),
                    width=width, train_size=len(x_tr), test_size=len(x_te), epochs=epochs,
                    batch_size=batch_size, learning_rate=learning_rate, data=source,
                    model=(f"Dense({width})-ReLU-Dense({num_classes})" if model == "mlp"
                           else f"Myrtle CNN, width {width}"),
                    optimizer="SGD minibatch",
                    static="last `period` epochs"),
        rows=rows,
        summary=summarize(rows, periods),
        seconds=time.perf_counter() - start,
    )


def summarize(rows, periods):
    """Mean ± std (ddof=0) of train / test accuracy per (A, period); A=1 in every period."""
    out = []
    amps = sorted({r["amplitude"] for r in rows})
    for a in amps:
        for p in periods:
            sel = [r for r in rows if r["amplitude"] == a and (a == 1 or r["period"] == p)]
            if not sel:
                continue
            tr = [r["train_acc"] for r in sel]
            te = [r["test_acc"] for r in sel]
            out.append(dict(amplitude=a, period=int(p), n=len(sel),
                            train_mean=float(np.mean(tr)), train_std=float(np.std(tr)),
                            test_mean=float(np.mean(te)), test_std=float(np.std(te))))
    return out


def table(result):
    """Markdown table: rows A, columns period; cells test (train) accuracy."""
    summary = result["summary"]
    periods = result["config"]["periods"]
    amps = sorted({s["amplitude"] for s in summary})
    by = {(s["amplitude"], s["period"]): s for s in summary}
    head = ["A \\ period (epochs)"] + [str(p) for p in periods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in amps:
        cells = ["1 (CE)" if a == 1 else f"{a:g}"]
        for p in periods:
            s = by.get((a, p))
            cells.append(f"test {s['test_mean']:.3f} ± {s['test_std']:.3f} / train "
                         f"{s['train_mean']:.3f}" if s else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result, path):
    """Heat maps of mean test and train accuracy over (A, period)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    periods = result["config"]["periods"]
    amps = sorted({s["amplitude"] for s in summary})
    by = {(s["amplitude"], s["period"]): s for s in summary}
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(periods), 0.7 * len(amps) + 2.2))
    for ax, key, title in ((axes[0], "test", "test accuracy"),
                           (axes[1], "train", "train accuracy")):
        grid = np.array([[by[(a, p)][f"{key}_mean"] if (a, p) in by else np.nan
                          for p in periods] for a in amps])
        std = np.array([[by[(a, p)][f"{key}_std"] if (a, p) in by else np.nan
                         for p in periods] for a in amps])
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for i in range(len(amps)):
            for j in range(len(periods)):
                ax.text(j, i, f"{grid[i, j]:.3f}\n±{std[i, j]:.3f}", ha="center",
                        va="center", fontsize=7,
                        color="w" if grid[i, j] < np.nanmean(grid) else "k")
        ax.set_xticks(range(len(periods)), [str(p) for p in periods])
        ax.set_yticks(range(len(amps)), ["1 (CE)" if a == 1 else f"{a:g}" for a in amps])
        ax.set_xlabel("period (epochs)")
        ax.set_ylabel("amplitude A")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    cfg = result["config"]
    fig.suptitle(f"{cfg['data']}: {cfg['train_size']} train, {cfg['model']}, "
                 f"{cfg['epochs']} epochs, {len(cfg['seeds'])} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(result, out_dir):
    """Writes ``overparam.json``, ``overparam.md`` and ``overparam.png``."""
    jpath = write_json(result, out_dir, "overparam")
    with open(os.path.join(out_dir, "overparam.md"), "w") as f:
        f.write(table(result) + "\n")
    return jpath, plot(result, os.path.join(out_dir, "overparam.png"))
