"""`python -m keras_dynloss` (or `keras-dynloss`) `fig4 | width-sweep | overparam [--help]`:
each writes `OUT/<command>.json` and `.png`; the sweeps also `.md` and `.jsonl` (`--resume`).
"""

import argparse
import contextlib
import importlib
import os
import sys
import threading

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


_DATA = _checked(lambda t: "idx" if t == "offline" else t, lambda t: t in (
    "auto", "keras", "idx", "tfds") or (t.startswith("tfds:") and len(t) > 5),
    "auto, keras, idx (or offline), tfds or tfds:NAME")
_POSITIVE = _checked(int, lambda v: v >= 1, "an integer >= 1")
_NONNEGATIVE = _checked(int, lambda v: v >= 0, "an integer >= 0")
_SPIRAL, _SWEEPS, _ALL = ("fig4", "width-sweep"), ("width-sweep", "overparam"), (
    "fig4", "width-sweep", "overparam")
#: (commands, flags, `add_argument` keywords); `dest` is the last flag's name. A flag not in
#: `_CONTROLS` is an option of the command's `run`, given only if used.
_OPTIONS = [
    (_ALL, ["--out"], dict(help="output folder (default: runs)")),
    (_ALL, ["--quick"], dict(action="store_true", help="tiny smoke-test settings")),
    (_ALL, ["--no-progress"], dict(action="store_true", help="no progress bar")),
    (_ALL, ["--threads"], dict(type=_NONNEGATIVE, help="CPU threads (default: 1 for the "
                               "spiral's small model, else 0: the backend's default)")),
    (_ALL, ["--learning-rate"], dict(type=_checked(float, lambda v: v > 0, "a number > 0"))),
    (_SPIRAL, ["--steps"], dict(type=_POSITIVE, help="GD steps")),
    (_SPIRAL, ["--period"], dict(type=_POSITIVE, help="period T in steps")),
    (_SPIRAL, ["--dtype"], dict(choices=("float32", "float64"))),
    (_SPIRAL, ["--loss"], dict(choices=LOSSES, help="ce: dynamical cross-entropy; mse: plain "
                               "MSE (A=1 only); dmse: Γ of the sample's class on its squared "
                               "error; dmse-componentwise: Γ_i on output i")),
    (_SPIRAL, ["--validation-seed"], dict(
        type=lambda t: None if t.lower() == "none" else int(t),
        help="noise seed of a held-out spiral (training uses 0); none: no validation "
             "(default: none for fig4, 1 for width-sweep)")),
    (["fig4"], ["--seed"], dict(type=int)),
    (["fig4"], ["--width"], dict(type=_POSITIVE)),
    (["fig4"], ["--amplitude"], dict(type=_checked(float, lambda v: v >= 1, "a number >= 1"))),
    (["fig4"], ["--probe-every"], dict(type=_NONNEGATIVE,
                                       help="Hessian and NTK probe interval (0: no probes)")),
    (_SWEEPS, ["--seed", "--seeds"], dict(type=_ints, help="seeds, e.g. 0,1,2 or 0-9")),
    (_SWEEPS, ["--amplitude", "--amplitudes"], dict(
        type=_floats, help="comma-separated A values (1: the static loss)")),
    (_SWEEPS, ["--processes"], dict(type=_POSITIVE, help="worker processes")),
    (_SWEEPS, ["--resume"], dict(action="store_true", help="keep the runs of OUT/<command>.jsonl"
                                 " (same settings), train only the missing ones")),
    (["width-sweep"], ["--width", "--widths"], dict(type=_ints)),
    (["width-sweep"], ["--reference"], dict(help="JSON of reference runs to compare with, e.g. "
                                            "results/reference/spiral_width_reference.json "
                                            "(if loss, steps, period, η and dtype match)")),
    (["overparam"], ["--width"], dict(type=_POSITIVE, help="hidden units / CNN filters")),
    (["overparam"], ["--period", "--periods"], dict(type=_ints, help="in epochs, e.g. 1,2,5")),
    (["overparam"], ["--steps", "--epochs"], dict(type=_POSITIVE)),
    *((["overparam"], [flag], dict(type=_POSITIVE)) for flag in (
        "--train-size", "--test-size", "--batch-size")),
    (["overparam"], ["--momentum"], dict(type=_checked(float, lambda v: 0 <= v < 1,
                                                       "a number in [0, 1)"))),
    (["overparam"], ["--data"], dict(type=_DATA, help="Fashion-MNIST from auto (Keras, IDX "
                                     "files, TFDS), keras, idx or tfds; tfds:NAME: a TFDS set")),
    (["overparam"], ["--model"], dict(choices=("auto", "mlp", "myrtle"), help="auto: a "
                                      "Myrtle-style CNN for tfds:NAME, else the MLP")),
]
_CONTROLS = dict(out="runs", quick=False, no_progress=False, threads=None, processes=None,
                 resume=False, reference=None)
_HELP = {"fig4": "Fig. 4: one spiral run, Γ, F, accuracy, λ_max",
         "width-sweep": "final spiral accuracy vs width, A, seed",
         "overparam": "amplitude x period grid on Fashion-MNIST"}


def build_parser():
    """The `argparse` parser of the three commands."""
    parser = argparse.ArgumentParser(
        prog="keras-dynloss", description="Reproduce the experiments of 'Tilting the playing "
        "field: dynamical loss functions for machine learning' with keras_dynloss.")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = {name: commands.add_parser(name, help=text, argument_default=argparse.SUPPRESS)
           for name, text in _HELP.items()}
    for names, flags, kwargs in _OPTIONS:
        for name in names:
            sub[name].add_argument(*flags, dest=flags[-1][2:].replace("-", "_"), **kwargs)
    for command in sub.values():
        command.set_defaults(**_CONTROLS)
    return parser


def _run(module, args, **kwargs):
    """`module.run` with the flags given over the command's defaults (or `QUICK`)."""
    given = {k: v for k, v in vars(args).items() if k in module.DEFAULTS}
    return module.run(**dict(module.QUICK if args.quick else {}, **given),
                      progress=not args.no_progress, **kwargs)


def _preload_matplotlib():  # the figure's modules, loaded while the training loop runs
    with contextlib.suppress(ImportError):
        importlib.import_module("matplotlib.backends.backend_agg")


def _fig4(args):
    from keras_dynloss.experiments import fig4

    threading.Thread(target=_preload_matplotlib, daemon=True).start()
    result = _run(fig4, args)
    val = result.get("val_acc")
    print(f"fig4: final training accuracy {result['final_acc']:.4f}"
          + (f", validation accuracy {val:.4f}" if val is not None else "")
          + f" ({result['config']['steps']} steps, {result['seconds']:.1f} s)")
    return fig4.write(result, args.out)


def _sweep(args):
    """A sweep's command: run (with the width sweep's reference, if given), table, files."""
    from keras_dynloss.experiments import overparam, width_sweep

    module = width_sweep if args.command == "width-sweep" else overparam
    given = dict(reference=width_sweep.load_reference(args.reference)) if args.reference else {}
    result = _run(module, args, out=args.out, resume=args.resume,
                  processes=args.processes or (1 if args.quick else None), **given)
    print(module.table(result))
    return module.write(result, args.out, **given)


_COMMANDS = {"fig4": _fig4, "width-sweep": _sweep, "overparam": _sweep}


def main(argv=None):
    """Runs the command of `argv` (default: the command line) and returns 0. Called with `argv`
    from a program, it leaves the process's CPU threads alone unless `--threads` is given."""
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
