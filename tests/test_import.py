"""`import keras_dynloss`: no TensorFlow start-up noise (but its warnings), and the
curvature subpackage imported on first use (``kd.CurvatureProbe`` still works)."""

import os
import re
import subprocess
import sys

import pytest

from keras_dynloss._quiet_import import filter_log, is_command_line

LOG = re.compile(r"^[IWEF]\d{4} ", re.M)

STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1.1 1 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1.2 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1.3 1 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
I0000 00:00:1.3 1 other_info.cc:1] more info
import time:       532 |   61714633 | something printed to stderr
/x/y.py:3: DeprecationWarning: something old
  import thing
W0000 00:00:1.4 1 some.cc:1] a warning
E0000 00:00:1.5 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: UNKNOWN ERROR (303)
E0000 00:00:1.6 1 other.cc:9] a real error
  with a second line
F0000 00:00:1.7 1 fatal.cc:1] fatal
"""


def test_filter_drops_info_and_keeps_the_rest():
    out = filter_log(STARTUP, min_level=1, cpu_only=False)
    assert "I0000" not in out and "absl::InitializeLog" not in out
    assert "To enable the following instructions" not in out  # the INFO line's 2nd line
    for kept in ("import time:", "DeprecationWarning: something old\n  import thing", "a warning",
                 "failed call to cuInit", "a real error\n  with a second line", "fatal"):
        assert kept in out


def test_filter_drops_cuinit_only_on_a_cpu_only_machine():
    out = filter_log(STARTUP, min_level=1, cpu_only=True)
    assert "cuInit" not in out
    assert "a real error" in out and "a warning" in out


@pytest.mark.parametrize("level, kept", [(0, "IWEF"), (2, "EF"), (3, "F")])
def test_filter_follows_the_users_level(level, kept):
    out = filter_log(STARTUP, min_level=level, cpu_only=False)
    assert set(m.group(0)[0] for m in LOG.finditer(out)) == set(kept)
    assert ("absl::InitializeLog" in out) == (level == 0)


def _run(code, **env_changes):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)


CODE = """
import os, sys
import keras_dynloss
import tensorflow as tf
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), bool(tf.config.list_physical_devices("GPU")))
print("keras_dynloss.curvature" in sys.modules)
sys.stderr.write("--- imported\\n")
tf.constant(1.0) + 1  # first op: devices initialised
try:
    tf.raw_ops.Reshape(tensor=[1, 2, 3], shape=[2])  # TensorFlow logs a WARNING
except tf.errors.InvalidArgumentError:
    pass
"""


def test_import_is_quiet_but_later_warnings_show():
    proc = _run(CODE)
    assert proc.returncode == 0, proc.stderr
    level, gpus, curvature_loaded = proc.stdout.split()[:3]
    assert curvature_loaded == "False"
    assert level == "None"  # the user's environment is left as it was
    before, _, after = proc.stderr.partition("--- imported\n")
    assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr
    assert "absl::InitializeLog" not in proc.stderr
    if gpus == "False":
        assert before == "", before  # CPU-only machine: nothing at all before
        assert "cuInit" not in after
    assert re.search(r"^W\d{4} .*INVALID_ARGUMENT", after, re.M), after


def test_asked_for_logs_are_shown():
    proc = _run(CODE, TF_CPP_MIN_LOG_LEVEL="0")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr
    assert proc.stdout.split()[0] == "0"


LAZY = """
import sys
import keras_dynloss as kd
from keras_dynloss import curvature as sub  # noqa: the real subpackage
names = {}
exec("from keras_dynloss import *", names)
missing = [n for n in sub.__all__ if names.get(n) is not getattr(sub, n)]
wrapper = sys.modules["keras.src.wrappers.sklearn_wrapper"]
print(wrapper.sklearn is not None)  # a program's import hides nothing
print(kd.CurvatureProbe is sub.CurvatureProbe, kd.curvature is sub,
      sorted(kd.__all__) == sorted(kd._EAGER + sub.__all__), missing == [],
      "CurvatureProbe" in dir(kd), kd.DynamicalLoss.__name__)
try:
    kd.no_such_name
except AttributeError as e:
    print("no_such_name" in str(e))
"""


def test_curvature_names_resolve_lazily():
    pytest.importorskip("sklearn")
    proc = _run(LAZY, TF_CPP_MIN_LOG_LEVEL="3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"] * 6 + ["DynamicalLoss", "True"]


@pytest.mark.parametrize("orig_argv, script, expected", [
    (["python", "-m", "keras_dynloss", "fig4"], "-m", True),
    (["python", "-B", "-X", "importtime", "-m", "keras_dynloss"], "-m", True),
    (["python", "-m", "keras_dynloss.__main__"], "-m", True),
    (["python", "/venv/bin/keras-dynloss", "fig4"], "/venv/bin/keras-dynloss", True),
    (["python", "-m", "keras_dynloss.cli"], "-m", False),
    (["python", "-m", "pytest"], "-m", False),
    (["python", "-c", "import keras_dynloss"], "-c", False),
    (["python", "train.py"], "train.py", False),
    ([], "", False),
])
def test_is_command_line(orig_argv, script, expected):
    assert is_command_line(orig_argv, script) is expected


CLI = """
import sys
sys.orig_argv = [sys.executable, "-m", "keras_dynloss", "fig4"]  # as the command line
import keras_dynloss
print(sys.modules["keras.src.wrappers.sklearn_wrapper"].sklearn is None,
      sys.modules["keras.src.saving.file_editor"].ipython is None)
import sklearn, IPython  # still importable afterwards
print(sklearn.__name__, IPython.__name__)
"""


def test_command_line_hides_unused_integrations_from_tensorflow_only():
    pytest.importorskip("sklearn")
    pytest.importorskip("IPython")
    proc = _run(CLI, TF_CPP_MIN_LOG_LEVEL="3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "sklearn", "IPython"]


def test_python_m_keras_dynloss_is_quiet_end_to_end(tmp_path):
    # The command line as a user runs it: quiet start (no INFO, no CPU-only
    # cuInit error), one thread, sklearn/IPython/JAX/SciPy hidden from
    # TensorFlow's import, outputs written, exit code 0.
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dynloss", "fig4", "--steps", "20", "--period", "10",
         "--width", "4", "--probe-every", "0", "--no-progress", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fig4.json").exists() and (tmp_path / "fig4.png").exists()
    assert not re.search(r"^[IE]\d{4} ", proc.stderr, re.M), proc.stderr
    assert "final training accuracy" in proc.stdout


def test_main_module_freezes_the_collector_around_the_command(monkeypatch):
    import gc

    from keras_dynloss import __main__ as entry

    events = []
    monkeypatch.setattr(gc, "freeze", lambda: events.append("freeze"))
    monkeypatch.setattr(entry, "main", lambda argv: events.append(("main", argv)) or 7)
    assert entry.run(["fig4"]) == 7
    assert events == ["freeze", ("main", ["fig4"]), "freeze"]

    def fails(argv):
        raise SystemExit(2)

    events.clear()
    monkeypatch.setattr(entry, "main", fails)
    with pytest.raises(SystemExit):
        entry.run([])
    assert events == ["freeze", "freeze"]
