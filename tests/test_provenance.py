"""Provenance of results files: version, git commit of this checkout only, versions, command."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_dynloss
from keras_dynloss.experiments import provenance as prov

pytestmark = pytest.mark.multi_backend
HAVE_GIT = shutil.which("git") is not None


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def _repo(path, setup_cfg):
    """A git repository at `path` with one commit holding `setup.cfg` and a package folder."""
    (path / "keras_dynloss").mkdir(parents=True)
    (path / "setup.cfg").write_text(setup_cfg)
    _git(path, "init", "-q")
    _git(path, "add", "setup.cfg")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return _git(path, "rev-parse", "--short", "HEAD")


def test_versions_backend_and_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/opt/x/keras_dynloss/__main__.py", "fig4", "--out",
                                      "my runs"])
    p = prov.provenance()
    assert p["keras_dynloss"] == keras_dynloss.__version__
    assert p["backend"] == keras.backend.backend()
    assert p["versions"]["keras"] == keras.__version__
    assert p["versions"]["numpy"] == np.__version__
    if p["backend"] == "jax":
        import jax

        assert p["versions"]["jax"] == jax.__version__
    if p["backend"] == "torch":
        import torch

        assert p["versions"]["torch"] == torch.__version__
    assert p["command"] == "python -m keras_dynloss fig4 --out 'my runs'"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/keras-dynloss", "overparam"])
    assert prov.provenance()["command"] == "/usr/bin/keras-dynloss overparam"


@pytest.mark.skipif(not HAVE_GIT, reason="needs git")
def test_commit_of_this_checkout():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(keras_dynloss.__file__)))
    try:
        head = _git(repo, "rev-parse", "--short", "HEAD")
    except subprocess.CalledProcessError:
        pytest.skip("the package is not in a git checkout (an installed wheel)")
    assert prov.provenance()["git_commit"] == head


@pytest.mark.skipif(not HAVE_GIT, reason="needs git")
def test_commit_of_a_checkout_of_this_project(tmp_path, monkeypatch):
    head = _repo(tmp_path, "[metadata]\nname = keras_dynloss\n")
    (tmp_path / "keras_dynloss" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "keras_dynloss/a.py")  # staged, not committed: dirty
    monkeypatch.setattr(prov, "_REPO_DIR", str(tmp_path))
    p = prov.provenance()
    assert p["git_commit"] == head and len(head) >= 7
    assert p["git_dirty"] is True and p["git_dirty_files"] == ["keras_dynloss/a.py"]


@pytest.mark.skipif(not HAVE_GIT, reason="needs git")
@pytest.mark.parametrize("layout", ["other project", "installed inside a user's repository"])
def test_no_commit_outside_this_project(tmp_path, monkeypatch, layout):
    if layout == "other project":  # a package folder at the top of someone else's project
        _repo(tmp_path, "[metadata]\nname = my_project\n")
        site = tmp_path
    else:  # pip install --target inside the user's repository: no setup.cfg beside it
        _repo(tmp_path, "[metadata]\nname = my_project\n")
        site = tmp_path / "venv" / "site-packages"
        (site / "keras_dynloss").mkdir(parents=True)
    monkeypatch.setattr(prov, "_REPO_DIR", str(site))
    p = prov.provenance()
    assert p["git_commit"] is None and p["git_dirty"] is None and p["git_dirty_files"] == []


@pytest.mark.skipif(not HAVE_GIT, reason="needs git")
def test_no_commit_when_this_project_is_a_subfolder_of_another_repository(tmp_path, monkeypatch):
    _repo(tmp_path, "[metadata]\nname = my_project\n")
    vendored = tmp_path / "third_party"
    (vendored / "keras_dynloss").mkdir(parents=True)
    (vendored / "setup.cfg").write_text("[metadata]\nname = keras_dynloss\n")
    monkeypatch.setattr(prov, "_REPO_DIR", str(vendored))
    assert prov.provenance()["git_commit"] is None
