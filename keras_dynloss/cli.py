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

from keras_dynloss.experiments._losses import LOSSES

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


def _data(text):
    text = "idx" if text == "offline" else text
    if text in ("auto", "keras", "idx", "tfds") or (text.startswith("tfds:") and len(text) > 5):
        return text
    raise argparse.ArgumentTypeError(
        f"expected auto, keras, idx (or offline), tfds or tfds:NAME. Received: {text!r}")


_POSITIVE = _checked(int, lambda v: v >= 1, "an integer >= 1")
_NONNEGATIVE = _checked(int, lambda v: v >= 0, "an integer >= 0")
_SPIRAL, _SWEEPS, _ALL = ("fig4", "width-sweep"), ("width-sweep", "overparam"), (
    "fig4", "width-sweep", "overparam")
#: (commands, flags, `add_argument` keywords); `dest` is the last flag's name.
_OPTIONS = [
    (_ALL, ["--out"], dict(default="runs", help="output folder (default: runs)")),
    (_ALL, ["--quick"], dict(action="store_true", help="tiny smoke-test settings")),
    (_ALL, ["--no-progress"], dict(action="store_true", help="no progress bar")),
    (_ALL, ["--threads"], dict(type=_NONNEGATIVE, help="CPU threads of this process (default: "
                               "1 for fig4 and width-sweep, whose small model runs fastest on "
                               "one; 0: the backend's default; workers get cores / processes)")),
    (_SPIRAL, ["--steps"], dict(type=_POSITIVE, help="GD steps")),
    (_SPIRAL, ["--period"], dict(type=_POSITIVE, help="period T in steps")),
    (_SPIRAL, ["--dtype"], dict(choices=("float32", "float64"))),
    (_SPIRAL, ["--loss"], dict(choices=LOSSES, default="ce",
                               help="ce: dynamical cross-entropy (A=1: cross-entropy); mse: "
                                    "plain MSE (A=1 only); dmse: Γ of the sample's class on its "
                                    "squared error; dmse-componentwise: Γ_i on output i")),
    (["fig4"], ["--seed"], dict(type=int)),
    (["fig4"], ["--width"], dict(type=_POSITIVE)),
    (["fig4"], ["--amplitude"], dict(type=_checked(float, lambda v: v >= 1, "a number >= 1"))),
    (["fig4"], ["--probe-every"], dict(type=_NONNEGATIVE,
                                       help="Hessian and NTK probe interval (0: no probes)")),
    (_SWEEPS, ["--seed", "--seeds"], dict(type=_ints, help="seeds, e.g. 0,1,2 or 0-9")),
    (_SWEEPS, ["--amplitude", "--amplitudes"], dict(
        type=_floats, help="comma-separated A values (1: the static loss)")),
    (_SWEEPS, ["--learning-rate"], dict(type=_checked(float, lambda v: v > 0, "a number > 0"))),
    (_SWEEPS, ["--processes"], dict(type=_POSITIVE, help="worker processes")),
    (_SWEEPS, ["--resume"], dict(action="store_true", help="keep the runs of OUT/<command>.jsonl"
                                 " (same settings), train only the missing ones")),
    (["width-sweep"], ["--width", "--widths"], dict(type=_ints)),
    (["width-sweep"], ["--reference"], dict(help="JSON of reference runs to compare with, e.g. "
                                            "results/reference/spiral_width_reference.json "
                                            "(if loss, steps, period, η and dtype match)")),
    (["overparam"], ["--width"], dict(type=_POSITIVE, help="hidden units / CNN filters")),
    (["overparam"], ["--period", "--periods"], dict(type=_ints, help="periods in epochs, "
                                                    "e.g. 1,2,5")),
    (["overparam"], ["--steps", "--epochs"], dict(type=_POSITIVE)),
    (["overparam"], ["--train-size"], dict(type=_POSITIVE)),
    (["overparam"], ["--test-size"], dict(type=_POSITIVE)),
    (["overparam"], ["--batch-size"], dict(type=_POSITIVE)),
    (["overparam"], ["--momentum"], dict(type=_checked(float, lambda v: 0 <= v < 1,
                                                       "a number in [0, 1)"))),
    (["overparam"], ["--data"], dict(type=_data, default="auto", help="auto (Fashion-MNIST "
                                     "from Keras, then Debian's IDX files, then TFDS), keras, "
                                     "idx, tfds, or tfds:NAME for any TFDS image set")),
    (["overparam"], ["--model"], dict(choices=("auto", "mlp", "myrtle"), default="auto",
                                      help="auto: the MLP for Fashion-MNIST, a Myrtle-style CNN "
                                           "for tfds:NAME; myrtle has its own defaults")),
]
for _command, _default in (("fig4", "none"), ("width-sweep", "1")):
    _OPTIONS.append(([_command], ["--validation-seed"], dict(
        type=lambda t: None if t.lower() == "none" else int(t), default=_default,
        help="noise seed of a held-out spiral (training uses 0); none: no validation "
             f"(default {_default})")))
_HELP = {"fig4": "Fig. 4: one spiral run, Γ, F, accuracy, λ_max",
         "width-sweep": "final spiral accuracy vs width, A, seed",
         "overparam": "amplitude x period grid on Fashion-MNIST"}


def build_parser():
    """The `argparse` parser of the three commands."""
    parser = argparse.ArgumentParser(
        prog="keras-dynloss", description="Reproduce the experiments of 'Tilting the playing "
        "field: dynamical loss functions for machine learning' with keras_dynloss.")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = {name: commands.add_parser(name, help=text) for name, text in _HELP.items()}
    for names, flags, kwargs in _OPTIONS:
        for name in names:
            sub[name].add_argument(*flags, dest=flags[-1][2:].replace("-", "_"), **kwargs)
    return parser


def _settings(module, args, defaults=None):
    """The command's defaults (or quick ones), overridden by the flags given."""
    out = dict(module.QUICK if args.quick else defaults or module.DEFAULTS)
    return dict(out, **{n: getattr(args, n) for n in out if getattr(args, n, None) is not None})


def _sweep_options(args):
    return dict(out=args.out, resume=args.resume, progress=not args.no_progress,
                processes=args.processes or (1 if args.quick else None))


def _fig4(args):
    from keras_dynloss.experiments import fig4

    cfg = _settings(fig4, args)
    result = fig4.run(loss=args.loss, validation_seed=args.validation_seed,
                      progress=not args.no_progress, **cfg)
    val = result.get("val_acc")
    print(f"fig4: final training accuracy {result['final_acc']:.4f}"
          + (f", validation accuracy {val:.4f}" if val is not None else "")
          + f" ({cfg['steps']} steps, {result['seconds']:.1f} s)")
    return fig4.write(result, args.out)


def _width_sweep(args):
    from keras_dynloss.experiments import width_sweep

    reference = width_sweep.load_reference(args.reference) if args.reference else None
    result = width_sweep.run(validation_seed=args.validation_seed, reference=reference,
                             **_settings(width_sweep, args), **_sweep_options(args))
    print(width_sweep.table(result))
    return width_sweep.write(result, args.out, reference)


def _overparam(args):
    from keras_dynloss.experiments import overparam

    cnn = args.model == "myrtle" or (args.model == "auto" and args.data.startswith("tfds:"))
    cfg = _settings(overparam, args, overparam.MYRTLE_DEFAULTS if cnn else None)
    result = overparam.run(data=args.data, model=args.model, **cfg, **_sweep_options(args))
    print(overparam.table(result))
    return overparam.write(result, args.out)


_COMMANDS = {"fig4": _fig4, "width-sweep": _width_sweep, "overparam": _overparam}


def main(argv=None):
    """Entry point of `python -m keras_dynloss` and `keras-dynloss`: runs the command of `argv`
    (default: the process's command line; called with `argv` from a program, the process's
    CPU threads are left alone unless `--threads` is given) and returns 0."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads, if it has not
    args = build_parser().parse_args(argv)
    from keras_dynloss.experiments.workers import set_cpu_threads

    spiral = args.command in _SPIRAL
    if args.threads is None:  # one thread for the spiral's small model, in the command line only
        args.threads = 1 if argv is None and spiral else 0
    set_cpu_threads(args.threads)
    import keras

    if spiral and keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # the spiral runs default to float64
    for path in _COMMANDS[args.command](args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
