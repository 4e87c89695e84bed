"""Command line: reproduce the paper's experiments.

    python -m keras_dynloss fig4        [--out DIR] [--steps N] [--width W] ...
    python -m keras_dynloss width-sweep [--out DIR] [--widths 16,32] [--seeds 0-9] \
        [--loss ce|mse|dmse|dmse-componentwise] [--reference results/reference/...json]
    python -m keras_dynloss overparam   [--out DIR] [--amplitudes 1,10,50] [--model myrtle] ...

(also installed as ``keras-dynloss``). Each command shows a progress bar and
writes ``DIR/<command>.json`` and ``DIR/<command>.png`` (default ``DIR=runs``).
``--quick`` shrinks every default to a smoke test of a few seconds.
"""

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def _ints(text):
    """``"0,1,5"`` -> (0, 1, 5); ``"0-9"`` -> (0, ..., 9); ranges mix with commas."""
    out = []
    try:
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers or ranges like 0-9. Received: {text!r}")
    return tuple(out)


def _optional_int(text):
    return None if str(text).lower() == "none" else int(text)


def _floats(text):
    return tuple(float(v) for v in str(text).replace(" ", "").split(",") if v)


def _common(p):
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    p.add_argument("--steps", type=int, default=None, help="training steps (GD) / epochs")
    p.add_argument("--period", type=int, default=None,
                   help="period T (steps for the spiral, epochs for overparam)")
    p.add_argument("--probe-every", type=int, default=None, dest="probe_every",
                   help="curvature probe interval in steps (0 = probes off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="TensorFlow CPU threads of this process (default: 1 for fig4 and "
                        "width-sweep, whose small model runs fastest on one thread; 0 = "
                        "TensorFlow's default; worker processes get cores / processes)")


def build_parser():
    """The ``argparse`` parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-dynloss",
        description="Reproduce the experiments of 'Tilting the playing field: dynamical "
                    "loss functions for machine learning' with keras_dynloss.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fig4", help="paper Fig. 4: one spiral run, Γ, F, accuracy, λ_max")
    _common(p)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--amplitude", type=float, default=None)
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    _loss_flags(p, validation_default="none")

    p = sub.add_parser("width-sweep", help="final spiral accuracy vs width, A and seed")
    _common(p)
    p.add_argument("--seeds", "--seed", type=_ints, default=None, dest="seeds",
                   help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--widths", "--width", type=_ints, default=None, dest="widths")
    p.add_argument("--amplitudes", "--amplitude", type=_floats, default=None,
                   dest="amplitudes", help="comma-separated A values (1 = cross-entropy)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    p.add_argument("--processes", type=int, default=None, help="worker processes")
    p.add_argument("--learning-rate", type=float, default=None, dest="learning_rate",
                   help="GD step size η (default 1)")
    _loss_flags(p, validation_default="1")
    p.add_argument("--reference", default=None,
                   help="JSON of reference runs to compare with (rows width/A/seed/final_acc), "
                        "e.g. results/reference/spiral_width_reference.json; compared only "
                        "when loss, steps, period, η and dtype match")

    p = sub.add_parser("overparam", help="amplitude x period grid on Fashion-MNIST")
    _common(p)
    p.add_argument("--seeds", "--seed", type=_ints, default=None, dest="seeds")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--amplitudes", "--amplitude", type=_floats, default=None,
                   dest="amplitudes")
    p.add_argument("--periods", type=_ints, default=None,
                   help="comma-separated periods in epochs (overrides --period)")
    p.add_argument("--train-size", type=int, default=None, dest="train_size")
    p.add_argument("--test-size", type=int, default=None, dest="test_size")
    p.add_argument("--data", type=_data_source, default="auto",
                   help="auto (Fashion-MNIST: Debian IDX files, then TFDS), offline, tfds, "
                        "or tfds:NAME for any TFDS image classification set (e.g. tfds:cifar10)")
    p.add_argument("--model", choices=("auto", "mlp", "myrtle"), default="auto",
                   help="auto: the MLP for Fashion-MNIST, a Myrtle-style CNN for tfds:NAME; "
                        "myrtle has its own defaults (width 32, 1000 images, batch 25, "
                        "lr 0.05, momentum 0.9, 4 seeds)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (same as --steps)")
    p.add_argument("--batch-size", type=int, default=None, dest="batch_size")
    p.add_argument("--learning-rate", type=float, default=None, dest="learning_rate")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs of OUT/overparam.json (same settings; more seeds, "
                        "amplitudes or periods are trained, the rest is kept)")
    p.add_argument("--processes", type=int, default=None, help="worker processes")
    return parser


def _loss_flags(p, validation_default):
    from keras_dynloss.experiments._losses import LOSSES

    p.add_argument("--loss", choices=LOSSES, default="ce",
                   help="ce: dynamical cross-entropy (A=1: cross-entropy); mse: plain MSE "
                        "(A=1 only); dmse: Γ of the sample's class on its squared error; "
                        "dmse-componentwise: Γ_i on output i (A=1: MSE)")
    p.add_argument("--validation-seed", type=_optional_int, default=_optional_int(
                       validation_default), dest="validation_seed",
                   help="noise seed of the held-out spiral (training uses 0); none to "
                        f"skip (default {validation_default})")


def _data_source(value):
    if value in ("auto", "offline", "tfds") or (value.startswith("tfds:") and len(value) > 5):
        return value
    raise argparse.ArgumentTypeError(
        f"expected auto, offline, tfds or tfds:NAME. Received: --data={value!r}")


def _settings(defaults, quick, args, names):
    """Defaults (or quick defaults) overridden by the flags that were given."""
    out = dict(quick if args.quick else defaults)
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def _fig4(args):
    from keras_dynloss.experiments import fig4

    cfg = _settings(fig4.DEFAULTS, fig4.QUICK, args,
                    ("width", "amplitude", "period", "steps", "seed", "probe_every", "dtype"))
    result = fig4.run(progress=not args.no_progress, loss=args.loss,
                      validation_seed=args.validation_seed, **cfg)
    paths = fig4.write(result, args.out)
    val = (f", validation accuracy {result['val_acc']:.4f}"
           if result.get("val_acc") is not None else "")
    print(f"fig4: final training accuracy {result['final_acc']:.4f}{val} "
          f"({cfg['steps']} steps, {result['seconds']:.1f} s)")
    return paths


def _width_sweep(args):
    from keras_dynloss.experiments import width_sweep

    cfg = _settings(width_sweep.DEFAULTS, width_sweep.QUICK, args,
                    ("widths", "amplitudes", "seeds", "steps", "period", "dtype", "loss",
                     "learning_rate"))
    cfg["validation_seed"] = args.validation_seed
    if args.probe_every:
        print("width-sweep: --probe-every is ignored (no curvature probes here)",
              file=sys.stderr)
    reference = width_sweep.load_reference(args.reference) if args.reference else None
    processes = args.processes or (1 if args.quick else None)
    result = width_sweep.run(processes=processes, progress=not args.no_progress, **cfg)
    result = width_sweep.attach_reference(result, reference)
    paths = width_sweep.write(result, args.out, reference)
    print(width_sweep.table(result))
    return paths


def _overparam(args):
    from keras_dynloss.experiments import overparam

    cnn = args.model == "myrtle" or (args.model == "auto" and args.data.startswith("tfds:"))
    cfg = _settings(overparam.MYRTLE_DEFAULTS if cnn else overparam.DEFAULTS, overparam.QUICK,
                    args, ("amplitudes", "periods", "seeds", "width", "train_size",
                           "test_size", "batch_size", "learning_rate", "momentum"))
    if args.period is not None and args.periods is None:
        cfg["periods"] = (args.period,)
    if args.steps is not None or args.epochs is not None:
        cfg["epochs"] = args.epochs if args.epochs is not None else args.steps
    processes = args.processes or (1 if args.quick else None)
    previous = None
    if args.resume and os.path.exists(os.path.join(args.out, "overparam.json")):
        import json

        with open(os.path.join(args.out, "overparam.json")) as f:
            previous = json.load(f)
    result = overparam.run(data=args.data, model=args.model, processes=processes,
                           progress=not args.no_progress, previous=previous, **cfg)
    paths = overparam.write(result, args.out)
    print(overparam.table(result))
    return paths


_COMMANDS = {"fig4": _fig4, "width-sweep": _width_sweep, "overparam": _overparam}


def main(argv=None):
    """Entry point of ``python -m keras_dynloss`` and ``keras-dynloss``."""
    args = build_parser().parse_args(argv)
    if getattr(args, "learning_rate", None) is not None and not args.learning_rate > 0:
        raise SystemExit(f"keras-dynloss: error: --learning-rate must be > 0, "
                         f"got {args.learning_rate}")
    if getattr(args, "momentum", None) is not None and not 0 <= args.momentum < 1:
        raise SystemExit(f"keras-dynloss: error: --momentum must be in [0, 1), "
                         f"got {args.momentum}")
    for name in ("steps", "period", "width", "probe_every", "train_size", "test_size",
                 "epochs", "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "probe_every" else 1):
            raise SystemExit(f"keras-dynloss: error: --{name.replace('_', '-')} must be "
                             f">= {0 if name == 'probe_every' else 1}, got {value}")
    from keras_dynloss._quiet_import import is_command_line
    from keras_dynloss.experiments._common import set_cpu_threads

    # One thread for the spiral in the command line's own process (a program
    # calling main() keeps its threads unless it passes --threads).
    set_cpu_threads(args.threads if args.threads is not None else 1 if (
        args.command in ("fig4", "width-sweep") and is_command_line()) else 0)
    paths = _COMMANDS[args.command](args)
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
