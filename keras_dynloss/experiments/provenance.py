"""What produced a results file: package version, git commit, backend, versions, command."""

import configparser
import importlib.metadata
import os
import shlex
import subprocess
import sys

__all__ = ["provenance"]

# The folder above the package: a checkout of this project, or site-packages.
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(*args):
    try:
        return subprocess.run(["git", "-C", _REPO_DIR, *args], capture_output=True, text=True,
                              timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _own_checkout():
    """Whether the folder above the package is the top of a git checkout of this project."""
    config = configparser.ConfigParser()
    try:
        config.read(os.path.join(_REPO_DIR, "setup.cfg"), encoding="utf-8")
    except configparser.Error:
        return False
    top = config.get("metadata", "name", fallback=None) == "keras_dynloss" and _git(
        "rev-parse", "--show-toplevel")
    return bool(top) and os.path.realpath(top.strip()) == os.path.realpath(_REPO_DIR)


def _version(module):
    """The version of `module` if imported, else of its installed distribution, else None."""
    if module in sys.modules:
        return getattr(sys.modules[module], "__version__", None)
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance():
    """A JSON-ready dict saying what produced a result.

    Returns:
        `{keras_dynloss, git_commit, git_dirty, git_dirty_files, backend, versions, command}`:
        the package's version; the short commit of this project's git checkout the package
        runs from (else None) and its uncommitted tracked files under `keras_dynloss/`; the
        backend; the versions of Keras, NumPy, TensorFlow, and JAX or PyTorch; the command.

    Example:
        >>> provenance()["backend"]
        'tensorflow'
    """
    import keras

    import keras_dynloss

    commit = dirty = None
    files = []
    if _own_checkout():
        commit = (_git("rev-parse", "--short", "HEAD") or "").strip() or None
        status = _git("status", "--porcelain", "--untracked-files=no", "--", "keras_dynloss")
        if status is not None:
            files = [line[3:] for line in status.splitlines()]
            dirty = bool(files)
    backend = keras.backend.backend()
    modules = {"jax": ["jax", "jaxlib"], "torch": ["torch"]}.get(backend, [])
    versions = dict(keras=keras.__version__, **{m: _version(m) for m in
                                               ["numpy", "tensorflow", *modules]})
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) == "__main__.py":  # python -m package
        argv[:1] = ["python", "-m", os.path.basename(os.path.dirname(argv[0]))]
    return dict(keras_dynloss=keras_dynloss.__version__, git_commit=commit, git_dirty=dirty,
                git_dirty_files=files, backend=backend, versions=versions,
                command=shlex.join(argv))
