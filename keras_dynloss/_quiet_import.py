"""Imports TensorFlow without its start-up log noise, keeping the messages that matter.

A plain ``import tensorflow`` on a CPU-only machine prints INFO lines from C++
static initialisers (oneDNN, "Could not find cuda drivers", CPU features) that
ignore ``TF_CPP_MIN_LOG_LEVEL``, then, at the first op, ``E ... failed call to
cuInit: ... UNKNOWN ERROR (303)``: an *error* line a CPU-only user can do nothing
about. :func:`import_tensorflow` (run by ``import keras_dynloss``) does this:

* If TensorFlow is already imported, nothing (the user's process, the user's logs);
  nor if ``KERAS_BACKEND`` names another backend (the package then refuses to load).
* If ``TF_CPP_MIN_LOG_LEVEL`` is unset, it is set to ``1`` (hide INFO, keep
  WARNING / ERROR / FATAL; ``2`` in the command line, which hides WARNING too) while TensorFlow loads — TensorFlow reads it once, so
  later INFO lines such as XLA's "Compiled cluster using XLA!" stay hidden too —
  and unset again afterwards, so child processes see the user's environment.
* File descriptor 2 is captured while TensorFlow loads and lists its GPUs (which
  initialises CUDA, so the cuInit message comes out now, not at the first op).
  The captured lines are written back to ``sys.stderr`` except INFO lines below
  the effective level, absl's "All log messages before absl::InitializeLog()"
  notice and, only when the user did not set ``TF_CPP_MIN_LOG_LEVEL``, the cuInit
  error on a machine without an NVIDIA driver (TensorFlow itself said "Could not
  find cuda drivers on your machine" and found no GPU). Every WARNING, ERROR and
  FATAL line and anything else (Python warnings) is kept.

Set ``TF_CPP_MIN_LOG_LEVEL=0`` to see everything TensorFlow prints.

Only in the command line (``python -m keras_dynloss ...`` or ``keras-dynloss
...``, see :func:`is_command_line`), scikit-learn, IPython, JAX and SciPy are
hidden while TensorFlow loads: ``import tensorflow`` imports all of Keras, which
imports them, if installed, for integrations the command line never uses
(Keras's scikit-learn wrappers and notebook display, TFLite's JAX converter,
sparse inputs of TensorFlow's legacy v1 Keras).
That is about a third of TensorFlow's import time where they are installed
(Colab). Those integrations are then unavailable in that process; the packages
themselves can still be imported. A Python program that imports
``keras_dynloss`` hides nothing.
"""

import os
import re
import sys
import tempfile

__all__ = ["import_tensorflow", "filter_log", "is_command_line", "CLI_HIDDEN"]

#: Optional packages hidden from TensorFlow's import in the command line.
CLI_HIDDEN = ("sklearn", "IPython", "jax", "scipy")

_SEVERITY = re.compile(r"^([IWEF])\d{4} ")
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT = "failed call to cuInit"
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called"
# Known second lines of multi-line INFO messages (cpu_feature_guard.cc).
_CONTINUATIONS = ("To enable the following instructions:",)


def filter_log(text, *, min_level, cpu_only):
    """The lines of ``text`` (TensorFlow's start-up stderr) worth showing.

    Args:
        text: captured stderr.
        min_level: drop log lines of severity below this (0 INFO, 1 WARNING,
            2 ERROR, 3 FATAL), as ``TF_CPP_MIN_LOG_LEVEL``.
        cpu_only: also drop the cuInit error (TensorFlow found no NVIDIA driver
            and no GPU, and the user did not choose a log level).

    Returns:
        The kept text. Known continuation lines of a dropped log line are
        dropped with it; all other lines that are not log lines are kept.
    """
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        match = _SEVERITY.match(line)
        if match:
            dropping = (_LEVELS[match.group(1)] < min_level
                        or (cpu_only and _CUINIT in line))
        elif line.startswith(_ABSL_NOTICE):
            dropping = min_level > 0
        elif not (dropping and line.startswith(_CONTINUATIONS)):
            dropping = False  # anything else is not ours to drop
        if not dropping:
            kept.append(line)
    return "".join(kept)


def is_command_line(orig_argv=None, script=None):
    """True in a process started as ``python -m keras_dynloss`` or ``keras-dynloss``.

    Args:
        orig_argv: the interpreter's command line (default ``sys.orig_argv``,
            Python >= 3.10; without it only the console script is recognised).
        script: the main script's path (default ``sys.argv[0]``).
    """
    script = (sys.argv[0] if sys.argv else "") if script is None else script
    if os.path.basename(script).split(".")[0] == "keras-dynloss":
        return True
    args = list((getattr(sys, "orig_argv", None) or []) if orig_argv is None else orig_argv)[1:]
    while args and args[0].startswith("-") and args[0] != "-m":
        if args[0] == "-c":
            return False
        args = args[2:] if args[0] in ("-X", "-W") else args[1:]
    return len(args) >= 2 and args[0] == "-m" and args[1] in (
        "keras_dynloss", "keras_dynloss.__main__")


def import_tensorflow(hide=None):
    """Imports and returns ``tensorflow`` as described in the module docstring.

    Args:
        hide: module names made unimportable while TensorFlow loads (default:
            :data:`CLI_HIDDEN` in the command line, else none).
    """
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return None  # keras_dynloss refuses other backends: no need to load TensorFlow
    user_level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    command_line = is_command_line()
    if user_level is None:
        # The command line also hides WARNING lines: XLA logs "Not handling type
        # DT_DOUBLE" many times in every float64 run, noise for the experiments.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if command_line else "1"
    try:
        saved = _capture_stderr()
    except OSError:  # no usable fd 2 (e.g. closed): import as is
        saved = None
    captured = ""
    gpus = None
    if hide is None:
        hide = CLI_HIDDEN if command_line else ()
    try:
        tf, gpus = _load_tensorflow(hide)
    finally:
        if saved is not None:
            captured = _restore_stderr(saved)
        if user_level is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        if captured:
            try:
                level = int(user_level) if user_level is not None else 1
            except ValueError:
                level = 0
            cpu_only = user_level is None and gpus == [] and _NO_DRIVER in captured
            text = filter_log(captured, min_level=level, cpu_only=cpu_only)
            if text:
                sys.stderr.write(text)
                sys.stderr.flush()
    return tf


def _load_tensorflow(hide):
    """Imports TensorFlow with the modules ``hide`` unimportable; returns it and its GPUs.

    A function of its own, not inline in :func:`import_tensorflow`: on CPython
    3.11 the frame depth at which TensorFlow's 4500 modules execute decides
    whether a hot call there straddles a 16 KiB frame-stack chunk, which is then
    mapped and unmapped on every call. Inline, ``python -c "import keras_dynloss"``
    hit that: 60 000 extra mmap/munmap pairs (strace) and +0.4 s of system time.
    ``bench/import_time.py`` measures the result.
    """
    hidden = [name for name in hide if name not in sys.modules]
    try:
        for name in hidden:
            sys.modules[name] = None  # `import name` raises ImportError
        import tensorflow as tf
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    try:
        gpus = tf.config.list_physical_devices("GPU")
    except Exception:  # reported later, by the user's own call
        gpus = None
    return tf, gpus


def _capture_stderr():
    sys.stderr.flush()
    tmp = tempfile.TemporaryFile(mode="w+b")
    original = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    return original, tmp


def _restore_stderr(saved):
    original, tmp = saved
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os.dup2(original, 2)
    os.close(original)
    tmp.seek(0)
    data = tmp.read().decode("utf-8", "replace")
    tmp.close()
    return data
