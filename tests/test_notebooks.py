"""The example notebooks run end to end (small-parameter mode) in a real kernel."""

import pathlib

import pytest

import nbformat
import nbclient
import ipykernel  # noqa: F401,E402  (the kernel the notebooks run on)

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))


def test_notebooks_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart_spiral.ipynb", "overparam_fashion_mnist.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_DYNLOSS_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    nb = nbformat.read(path, as_version=4)
    assert "pip" in nb.cells[1].source  # Colab: the first code cell installs the package
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the notebook should draw its figures"
