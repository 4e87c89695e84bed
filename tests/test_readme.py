"""The README's quickstart runs as written, without warnings, and prints what it says.

The block is run with a seventh of its steps (10000 instead of 70000; period 1000, the last
one static), so the accuracies it states cannot be checked here; what a short run can
check is checked: the printed line has the stated form, and the dynamical loss already leads
cross-entropy from the same initial weights.
"""

import contextlib
import io
import pathlib
import re
import warnings

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SHORTER = {"epochs=70": "epochs=10", "period=5000": "period=1000",
           "static_after=65000": "static_after=9000"}
LINE = r"training accuracy: cross-entropy (\d\.\d{3}), dynamical loss (\d\.\d{3})"


def _quickstart():
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    expected = re.search(r"Expected output.*?\n\n    (.*?)\n", section, re.S).group(1)
    return block, expected


def test_quickstart_runs_without_warnings_and_prints_the_stated_line():
    block, expected = _quickstart()
    assert re.fullmatch(LINE, expected), expected
    for long, short in SHORTER.items():
        assert block.count(long) == 1, long
        block = block.replace(long, short)
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        exec(compile(block, "README quickstart", "exec"), {"__name__": "__readme__"})
    # Keras's own variables trip NumPy 2's `copy` DeprecationWarning, hidden from users.
    shown = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not shown
    printed = re.fullmatch(LINE, out.getvalue().strip())
    assert printed, out.getvalue()
    plain, dynamical = map(float, printed.groups())
    assert 0.0 < plain < 1.0 and 0.0 < dynamical <= 1.0
    assert dynamical > plain + 0.05
