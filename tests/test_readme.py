"""The README's quickstart runs as written (with fewer epochs) and shows Γ."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_logs_gamma():
    text = README.read_text()
    block = re.search(r"## Quickstart\s+```python\n(.*?)```", text, re.S).group(1)
    assert "DynamicalLoss(" in block and "DynamicalLossScheduler()" in block
    block = block.replace("epochs=12", "epochs=2")
    namespace = {}
    exec(compile(block, "README quickstart", "exec"), namespace)
    history = namespace["history"].history
    assert len(history["gamma_0"]) == 2
    gamma = np.array([[history[f"gamma_{i}"][e] for i in range(3)] for e in range(2)])
    np.testing.assert_allclose(gamma.sum(1), 3.0, rtol=1e-5)
    # epoch 2 ends at step 999: period 1 (class 1) at phase 499/500
    assert history["emphasized_class"] == [0, 1]
