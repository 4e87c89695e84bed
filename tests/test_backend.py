"""TensorFlow only: under another Keras backend the import fails with one clear error."""

import json
import os
import subprocess
import sys

import pytest


def _import(env_backend=None, keras_json_backend=None, tmp_path=None, code="import keras_dynloss"):
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "KERAS_HOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if env_backend is not None:
        env["KERAS_BACKEND"] = env_backend
    if keras_json_backend is not None:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": keras_json_backend}))
        env["KERAS_HOME"] = str(tmp_path)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_other_backend_from_environment_is_refused(backend):
    out = _import(env_backend=backend)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: keras_dynloss needs Keras's TensorFlow backend")
    assert f"KERAS_BACKEND={backend}" in last and "Set the environment variable KERAS_BACKEND=tensorflow" in last
    assert out.stderr.count("Traceback") == 1  # one error, not a chain from inside Keras


def test_other_backend_from_keras_json_or_already_imported_keras(tmp_path):
    out = _import(keras_json_backend="numpy", tmp_path=tmp_path)
    assert out.returncode != 0
    # "(from keras.json)", or "(from keras.config.backend())" once TensorFlow's
    # import has imported Keras
    assert "ImportError: keras_dynloss needs Keras's TensorFlow backend" in out.stderr
    # Keras's numpy backend imports jax: without jax `import keras` fails, and
    # the message still names the configured backend.
    assert "backend is 'numpy' (from keras" in out.stderr
    # Keras imported first (with TensorFlow, which needs no other package)
    # and reporting another backend.
    out = _import(code="import keras; keras.config.backend = lambda: 'numpy'; import keras_dynloss")
    assert out.returncode != 0
    assert "backend is 'numpy' (from keras.config.backend())" in out.stderr


def test_tensorflow_backend_imports(tmp_path):
    code = "import keras_dynloss, keras; print(keras.config.backend())"
    for out in (_import(env_backend="tensorflow", code=code),
                _import(keras_json_backend="tensorflow", tmp_path=tmp_path, code=code)):
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "tensorflow"
