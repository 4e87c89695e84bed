"""Dynamical loss in the overparameterised regime: amplitude x period on Fashion-MNIST.

A wide MLP (784-width-10, ReLU) or a Myrtle-style CNN fits a small
class-balanced subset of Fashion-MNIST with minibatch SGD; Γ(t) is triangular
with period ``P`` epochs (:class:`~keras_dynloss.DynamicalLossScheduler` with
``period_epochs=P``), cyclic over the 10 classes, the last ``P`` epochs static.
``A = 1`` is plain cross-entropy (it does not depend on ``P``: it is trained
once per seed and shown in every column). Reported per cell: final train and
test accuracy over seeds (n, mean ± std, median, quartiles) and a two-sided
Mann–Whitney U test of each dynamical cell's test accuracy against
cross-entropy's, Holm-adjusted over the cells.
"""

import os
import time

import numpy as np

from keras_dynloss.experiments import stats
from keras_dynloss.experiments._common import run_jobs, write_json
from keras_dynloss.experiments._provenance import provenance

__all__ = ["run", "summarize", "table", "plot", "write", "load_data", "build_model",
           "DEFAULTS", "MYRTLE_DEFAULTS", "QUICK"]

DEFAULTS = dict(amplitudes=(1.0, 10.0, 100.0), periods=(1, 2, 5), seeds=(0, 1, 2),
                width=512, train_size=2000, test_size=10000, epochs=60, batch_size=50,
                learning_rate=0.1, momentum=0.0)
#: ``--model myrtle``: 1000 images (100 per class) for a 28k-parameter CNN
#: (28 parameters per image); see the README for the train accuracy it reaches.
MYRTLE_DEFAULTS = dict(amplitudes=(1.0, 10.0, 100.0), periods=(1, 2, 5), seeds=(0, 1, 2, 3),
                       width=32, train_size=1000, test_size=10000, epochs=60, batch_size=25,
                       learning_rate=0.05, momentum=0.9)
QUICK = dict(amplitudes=(1.0, 10.0), periods=(1,), seeds=(0,), width=32, train_size=200,
             test_size=200, epochs=2, batch_size=50, learning_rate=0.05, momentum=0.0)


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
    # He-normal kernels: neural-tangents' Myrtle (W_std = √2, no batch norm) in
    # standard parameterisation; Glorot would shrink the signal by √2 per layer.
    conv = dict(kernel_size=3, padding="same", activation="relu",
                kernel_initializer="he_normal")
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
         batch_size, learning_rate, model_kind, num_classes, momentum=0.0):
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
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum), loss=loss,
                  metrics=["accuracy"], steps_per_execution=steps_per_epoch)
    data = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size, drop_remainder=True))
    start = time.perf_counter()
    hist = model.fit(data, epochs=epochs, verbose=0, shuffle=False,  # data shuffles itself
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
        batch_size=50, learning_rate=0.1, momentum=0.0, data="auto", model="auto",
        processes=None, progress=True, previous=None):
    """Trains the grid and returns the JSON-ready result.

    Args:
        amplitudes: A values (1 = cross-entropy, trained once per seed).
        periods: periods in epochs.
        seeds: weight / shuffling seeds (the data subset is fixed, seed 0).
        width: hidden units (MLP) or filters per layer (Myrtle CNN).
        train_size, test_size: Fashion-MNIST subset sizes.
        epochs, batch_size, learning_rate, momentum: minibatch SGD.
        data: ``"auto"``, ``"offline"``, ``"tfds"`` or ``"tfds:NAME"`` (see
            :func:`load_data`).
        model: ``"mlp"``, ``"myrtle"`` (see :func:`build_model`) or ``"auto"``:
            the MLP for Fashion-MNIST, the Myrtle CNN for ``"tfds:NAME"``. The CNN's
            inputs are standardised with the training subset's pixel mean and std.
        processes: worker processes (default ``os.cpu_count()``).
        progress: progress bar.
        previous: an earlier result of the same settings (amplitudes, periods and
            seeds may differ); its runs are reused, not retrained (``--resume``).

    Returns:
        A dict with ``config`` (with the git commit and ``reused_runs``), ``rows``
        ({amplitude, period, seed, train_acc, test_acc, ..., git_commit of the run};
        A=1 rows have ``period`` None),
        ``summary`` (:func:`summarize`) and ``comparison`` (:func:`compare`).
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
    preprocessing = "pixels in [0, 1]"
    if model == "myrtle":
        mean, std = float(x_tr.mean()), float(x_tr.std())
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        preprocessing = f"(x - {mean:.4f}) / {std:.4f} (training-subset pixel mean, std)"
    common = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, width=width,
                  epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                  momentum=momentum, model_kind=model, num_classes=num_classes)
    combos = []
    for a in amplitudes:
        for p in ([periods[0]] if a == 1 else periods):
            for s in seeds:
                combos.append((float(a), int(p), int(s)))
    config = dict(amplitudes=list(amplitudes), periods=list(periods), seeds=list(seeds),
                  width=width, train_size=len(x_tr), test_size=len(x_te), epochs=epochs,
                  batch_size=batch_size, learning_rate=learning_rate, momentum=momentum,
                  data=source, preprocessing=preprocessing,
                  model=(f"Dense({width})-ReLU-Dense({num_classes})" if model == "mlp"
                         else f"Myrtle CNN, width {width}"),
                  parameters=_count_params(model, x_tr.shape[1:], num_classes, width),
                  optimizer="SGD minibatch" + (f", momentum {momentum:g}" if momentum else ""),
                  static="last `period` epochs", **provenance())
    reuse = _reusable(previous, config)
    key = lambda a, p, s: (float(a), None if a == 1 else int(p), int(s))  # noqa: E731
    jobs = [dict(common, amplitude=a, period=p, seed=s) for a, p, s in combos
            if key(a, p, s) not in reuse]
    start = time.perf_counter()
    new = run_jobs(_one, jobs, processes=processes, progress=progress, label="overparam")
    for r in new:
        r["git_commit"] = config["git_commit"]
        if r["amplitude"] == 1:
            r["period"] = None
    new = {key(r["amplitude"], r["period"], r["seed"]): r for r in new}
    rows = [reuse.get(k) or new[k] for k in (key(*c) for c in combos)]
    config["reused_runs"] = len(combos) - len(jobs)
    return dict(experiment="overparam", config=config, rows=rows,
                summary=summarize(rows, periods), comparison=compare(rows, periods),
                seconds=time.perf_counter() - start)


_MAY_DIFFER = ("amplitudes", "periods", "seeds", "git_commit", "git_dirty", "git_dirty_files",
               "versions", "reused_runs")


def _reusable(previous, config):
    """``{(A, period or None, seed): row}`` of ``previous`` if its settings match."""
    if previous is None:
        return {}
    old = {k: v for k, v in previous["config"].items() if k not in _MAY_DIFFER}
    now = {k: v for k, v in config.items() if k not in _MAY_DIFFER}
    if old != now:
        diff = {k: (old.get(k), now.get(k)) for k in old.keys() | now.keys()
                if old.get(k) != now.get(k)}
        raise ValueError("Invalid value for argument `previous`: expected a result with the "
                         f"same settings. Received: previous with (old, new) = {diff}")
    commit = previous["config"].get("git_commit")
    return {(float(r["amplitude"]), r["period"], int(r["seed"])): dict(
        {"git_commit": commit}, **r) for r in previous["rows"]}


def _count_params(kind, input_shape, num_classes, width):
    return int(build_model(kind, input_shape, num_classes, width).count_params())


def _cell(rows, a, p):
    return [r for r in rows if r["amplitude"] == a and (a == 1 or r["period"] == p)]


def summarize(rows, periods):
    """Per (A, period): ``train`` / ``test`` :func:`~stats.describe` dicts (A=1 in each)."""
    out = []
    for a in sorted({r["amplitude"] for r in rows}):
        for p in periods:
            sel = _cell(rows, a, p)
            if sel:
                out.append(dict(amplitude=a, period=int(p), n=len(sel),
                                train=stats.describe([r["train_acc"] for r in sel]).as_dict(),
                                test=stats.describe([r["test_acc"] for r in sel]).as_dict()))
    return out


def compare(rows, periods):
    """Test accuracy of each (A ≠ 1, period) vs cross-entropy: Mann–Whitney U, Holm.

    Returns ``{amplitude, period, u, pvalue, method, effect (P(dynamical seed beats
    a cross-entropy seed)), pvalue_holm, significant}`` per cell.
    """
    ce = [r["test_acc"] for r in rows if r["amplitude"] == 1]
    out = []
    if ce:
        for a in sorted({r["amplitude"] for r in rows} - {1.0}):
            for p in periods:
                sel = _cell(rows, a, p)
                if sel:
                    res = stats.mann_whitney([r["test_acc"] for r in sel], ce)
                    out.append(dict(amplitude=a, period=int(p), **res.as_dict()))
    for d, q in zip(out, stats.holm([d["pvalue"] for d in out])):
        d["pvalue_holm"], d["significant"] = q, q < 0.05
    return out


def _ms(d):
    return f"{d['mean']:.3f} ± {d['std']:.3f}" if d["std"] is not None else f"{d['mean']:.3f}"


def table(result):
    """Markdown: one row per (A, period): test and train accuracy, test vs CE."""
    cmp = {(c["amplitude"], c["period"]): c for c in result.get("comparison", [])}
    lines = ["| A | period (epochs) | n | test mean ± std | test median [Q1, Q3] | train mean "
             "± std | train min | vs CE: effect | p | p (Holm) | significant at 5 % |",
             "|" + "---|" * 11]
    for s in result["summary"]:
        a, p = s["amplitude"], s["period"]
        if a == 1 and p != result["config"]["periods"][0]:
            continue
        t = s["test"]
        c = cmp.get((a, p))
        test = (f"{c['effect']:.2f} | {stats.fmt_p(c['pvalue'])} | "
                f"{stats.fmt_p(c['pvalue_holm'])} | {'yes' if c['significant'] else 'no'}"
                if c else "— | — | — | —")
        lines.append(f"| {'1 (CE)' if a == 1 else f'{a:g}'} | {'any' if a == 1 else p} | "
                     f"{s['n']} | {_ms(t)} | {t['median']:.3f} [{t['q1']:.3f}, {t['q3']:.3f}] | "
                     f"{_ms(s['train'])} | {s['train']['min']:.3f} | {test} |")
    return "\n".join(lines)


def plot(result, path):
    """Every seed's test and train accuracy as a dot per (A, period), medians as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cfg = result["rows"], result["config"]
    periods = cfg["periods"]
    amps = sorted({r["amplitude"] for r in rows})
    cells = [(1.0, None)] * (1.0 in amps) + [(a, p) for a in amps if a != 1 for p in periods]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.1 * len(cells), 4.2))
    for ax, key, title in ((axes[0], "test_acc", "test accuracy"),
                           (axes[1], "train_acc", "train accuracy")):
        for i, (a, p) in enumerate(cells):
            v = np.array([r[key] for r in _cell(rows, a, p)])
            color = "C0" if a == 1 else f"C{1 + sorted(set(amps) - {1.0}).index(a)}"
            ax.scatter(np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), v, s=14,
                       color=color, alpha=0.7)
            ax.plot([i - 0.3, i + 0.3], [np.median(v)] * 2, color=color, lw=2)
            if a == 1:
                ax.axhline(np.median(v), color="C0", lw=0.7, ls=":")
        ax.set_xticks(range(len(cells)),
                      ["CE" if a == 1 else f"A={a:g}\nP={p}" for a, p in cells], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{cfg['data']}: {cfg['train_size']} train, {cfg['model']}, "
                 f"{cfg['epochs']} epochs, {len(cfg['seeds'])} seeds (dots: seeds, bars: "
                 "medians)", fontsize=9)
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
