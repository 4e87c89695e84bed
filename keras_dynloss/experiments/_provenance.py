"""What produced a result: git commit of the checkout and library versions."""

import os
import subprocess

__all__ = ["provenance"]


def _git(*args):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                             timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance():
    """``{git_commit, git_dirty, git_dirty_files, versions}`` for a results JSON.

    ``git_commit`` is ``git rev-parse --short HEAD`` of the checkout holding the
    package (None outside a git checkout); ``git_dirty`` says whether
    ``keras_dynloss/`` had uncommitted changes to tracked files when the run
    started, ``git_dirty_files`` which.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    commit = _git("rev-parse", "--short", "HEAD")
    status = (_git("status", "--porcelain", "--untracked-files=no", "--", "keras_dynloss")
              if commit else None)
    return dict(git_commit=commit, git_dirty=None if status is None else bool(status),
                git_dirty_files=[ln.split(None, 1)[-1] for ln in (status or "").splitlines()],
                versions=dict(tensorflow=tf.__version__, keras=keras.__version__,
                              numpy=np.__version__))
