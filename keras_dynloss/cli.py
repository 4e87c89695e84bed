"""Command line: reproduce the paper's experiments.

    python -m keras_dynloss fig4        [--out DIR] [--steps N] [--width W] [--probe-every K] ...
    python -m keras_dynloss width-sweep [--out DIR] [--widths 16,32] [--seeds 0-9] [--resume] ...
    python -m keras_dynloss overparam   [--out DIR] [--amplitudes 1,10,100] [--model myrtle] ...

(also installed as `keras-dynloss`). Each command shows its progress and writes
`DIR/<command>.json` and `.png` (default DIR: runs); the sweeps also write a Markdown table
(`.md`) and every run as it finishes (`.jsonl`, which `--resume` continues). `--quick` shrinks
every default to a smoke test of seconds.
"""

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def _ints(text):
    """"0,1,5" -> (0, 1, 5); "0-9" -> (0, ..., 9); ranges and values mix."""
    out = []
    try:
        for part in filter(None, text.replace(" ", "").split(",")):
            lo, dash, hi = part.partition("-")
            out += range(int(lo), int(hi) + 1) if dash and lo else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers or ranges like 0-9. Received: {text!r}")
    return tuple(out)


def _floats(text):
    return tuple(float(v) for v in filter(None, text.replace(" ", "").split(",")))


def _checked(kind, ok, expected):
    """A parser of `kind` values for which `ok(value)` holds."""
    def parse(text):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}. Received: {text}")
        return value
    return parse


_POSITIVE = _checked(int, lambda v: v >= 1, "an integer >= 1")
_NONNEGATIVE = _checked(int, lambda v: v >= 0, "an integer >= 0")
_LEARNING_RATE = _checked(float, lambda v: v > 0, "a number > 0")
_AMPLITUDE = _checked(float, lambda v: v >= 1, "a number >= 1")
_MOMENTUM = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _optional_int(text):
    return None if text.lower() == "none" else int(text)


def _data(text):
    text = "idx" if text == "offline" else text
    if text in ("auto", "keras", "idx", "tfds") or (text.startswith("tfds:") and len(text) > 5):
        return text
    raise argparse.ArgumentTypeError(
        f"expected auto, keras, idx (or offline), tfds or tfds:NAME. Received: {text!r}")


def build_parser():
    """The `argparse` parser of the three commands."""
    from keras_dynloss.experiments._losses import LOSSES

    parser = argparse.ArgumentParser(
        prog="keras-dynloss", description="Reproduce the experiments of 'Tilting the playing "
        "field: dynamical loss functions for machine learning' with keras_dynloss.")
    commands = parser.add_subparsers(dest="command", required=True)
    fig4 = commands.add_parser("fig4", help="Fig. 4: one spiral run, Γ, F, accuracy, λ_max")
    width = commands.add_parser("width-sweep", help="final spiral accuracy vs width, A, seed")
    over = commands.add_parser("overparam", help="amplitude x period grid on Fashion-MNIST")
    for p in (fig4, width, over):
        p.add_argument("--out", default="runs", help="output folder (default: runs)")
        p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--threads", type=_NONNEGATIVE, default=None,
                       help="CPU threads of this process (default: 1 for fig4 and "
                            "width-sweep, whose small model runs fastest on one; 0: the "
                            "backend's default; worker processes get cores / processes)")
    for p in (fig4, width):
        p.add_argument("--steps", type=_POSITIVE, help="GD steps")
        p.add_argument("--period", type=_POSITIVE, help="period T in steps")
        p.add_argument("--dtype", choices=("float32", "float64"))
        p.add_argument("--loss", choices=LOSSES, default="ce",
                       help="ce: dynamical cross-entropy (A=1: cross-entropy); mse: plain MSE "
                            "(A=1 only); dmse: Γ of the sample's class on its squared error; "
                            "dmse-componentwise: Γ_i on output i")
    fig4.add_argument("--seed", type=int)
    fig4.add_argument("--width", type=_POSITIVE)
    fig4.add_argument("--amplitude", type=_AMPLITUDE)
    fig4.add_argument("--probe-every", type=_NONNEGATIVE, dest="probe_every",
                      help="Hessian and NTK probe interval in steps (0: no probes)")
    for p, default in ((fig4, "none"), (width, "1")):
        p.add_argument("--validation-seed", type=_optional_int, dest="validation_seed",
                       default=_optional_int(default),
                       help="noise seed of a held-out spiral (training uses 0); none: no "
                            f"validation (default {default})")
    for p in (width, over):
        p.add_argument("--seeds", "--seed", type=_ints, dest="seeds",
                       help="seeds, e.g. 0,1,2 or 0-9")
        p.add_argument("--amplitudes", "--amplitude", type=_floats, dest="amplitudes",
                       help="comma-separated A values (1: the static loss)")
        p.add_argument("--learning-rate", type=_LEARNING_RATE, dest="learning_rate")
        p.add_argument("--processes", type=_POSITIVE, help="worker processes")
        p.add_argument("--resume", action="store_true",
                       help="keep the runs of OUT/<command>.jsonl (same settings) and train "
                            "only the missing ones (after a crash, or more seeds, ...)")
    width.add_argument("--widths", "--width", type=_ints, dest="widths")
    width.add_argument("--reference", help="JSON of reference runs to compare with, e.g. "
                       "results/reference/spiral_width_reference.json (compared only when "
                       "loss, steps, period, η and dtype match)")
    over.add_argument("--width", type=_POSITIVE, help="hidden units / CNN filters")
    over.add_argument("--periods", "--period", type=_ints, dest="periods",
                      help="periods in epochs, e.g. 1,2,5")
    over.add_argument("--epochs", "--steps", type=_POSITIVE, dest="epochs")
    over.add_argument("--train-size", type=_POSITIVE, dest="train_size")
    over.add_argument("--test-size", type=_POSITIVE, dest="test_size")
    over.add_argument("--batch-size", type=_POSITIVE, dest="batch_size")
    over.add_argument("--momentum", type=_MOMENTUM, help="SGD momentum in [0, 1)")
    over.add_argument("--data", type=_data, default="auto",
                      help="auto (Fashion-MNIST from Keras, then Debian's IDX files, then "
                           "TFDS), keras, idx, tfds, or tfds:NAME for any TFDS image set")
    over.add_argument("--model", choices=("auto", "mlp", "myrtle"), default="auto",
                      help="auto: the MLP for Fashion-MNIST, a Myrtle-style CNN for "
                           "tfds:NAME; myrtle has its own defaults")
    return parser


def _settings(module, args, names, defaults=None):
    """The command's defaults (or quick ones), overridden by the flags given."""
    out = dict(module.QUICK if args.quick else defaults or module.DEFAULTS)
    out.update({n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    return out


def _fig4(args):
    from keras_dynloss.experiments import fig4

    cfg = _settings(fig4, args, ("width", "amplitude", "period", "steps", "seed",
                                 "probe_every", "dtype"))
    result = fig4.run(loss=args.loss, validation_seed=args.validation_seed,
                      progress=not args.no_progress, **cfg)
    val = result.get("val_acc")
    print(f"fig4: final training accuracy {result['final_acc']:.4f}"
          + (f", validation accuracy {val:.4f}" if val is not None else "")
          + f" ({cfg['steps']} steps, {result['seconds']:.1f} s)")
    return fig4.write(result, args.out)


def _sweep_options(args):
    return dict(out=args.out, resume=args.resume, progress=not args.no_progress,
                processes=args.processes or (1 if args.quick else None))


def _width_sweep(args):
    from keras_dynloss.experiments import width_sweep

    cfg = _settings(width_sweep, args, ("widths", "amplitudes", "seeds", "steps", "period",
                                        "dtype", "loss", "learning_rate"))
    reference = width_sweep.load_reference(args.reference) if args.reference else None
    result = width_sweep.run(validation_seed=args.validation_seed, reference=reference, **cfg,
                             **_sweep_options(args))
    print(width_sweep.table(result))
    return width_sweep.write(result, args.out, reference)


def _overparam(args):
    from keras_dynloss.experiments import overparam

    cnn = args.model == "myrtle" or (args.model == "auto" and args.data.startswith("tfds:"))
    cfg = _settings(overparam, args, ("amplitudes", "periods", "seeds", "width", "train_size",
                                      "test_size", "epochs", "batch_size", "learning_rate",
                                      "momentum"),
                    overparam.MYRTLE_DEFAULTS if cnn else overparam.DEFAULTS)
    result = overparam.run(data=args.data, model=args.model, **cfg, **_sweep_options(args))
    print(overparam.table(result))
    return overparam.write(result, args.out)


_COMMANDS = {"fig4": _fig4, "width-sweep": _width_sweep, "overparam": _overparam}


def main(argv=None):
    """Entry point of `python -m keras_dynloss` and `keras-dynloss`.

    Args:
        argv: the arguments (default: the process's command line). Called with `argv`
            from a program, the process's CPU threads are left alone unless `--threads` is
            given.

    Returns:
        0 (an exit status).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, if it has not
    command_line = argv is None
    args = build_parser().parse_args(argv)
    from keras_dynloss.experiments.workers import set_cpu_threads

    threads = args.threads
    if threads is None:  # one thread for the spiral's small model, in the command line only
        threads = 1 if command_line and args.command in ("fig4", "width-sweep") else 0
    set_cpu_threads(threads)
    import keras

    if args.command in ("fig4", "width-sweep") and keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # the spiral runs default to float64
    for path in _COMMANDS[args.command](args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
