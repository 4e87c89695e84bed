"""Where `CurvatureProbe` keeps its series: in memory (`history`) or a CSV file."""

import csv
import os

import numpy as np

from keras_dynloss import _checks as val


class Recorder:
    """Appends one row per probe: `step`, `epoch`, then the probe's values.

    Args:
        csv_path: `None` (rows kept in `history`, a dict of lists) or a file
            path: each row is appended to that CSV file and flushed at once,
            and `history` stays empty (memory flat in long runs). The first row
            written by this recorder overwrites the file and writes the header.
    """

    def __init__(self, csv_path=None):
        if csv_path is not None and not isinstance(csv_path, (str, os.PathLike)):
            raise val.invalid("csv_path", "a file path (str or os.PathLike) or None", csv_path)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.history = {}
        self._columns = None

    def record(self, row):
        if self.csv_path is None:
            rows = len(self.history.get("step", []))
            for key, value in row.items():  # a key new in this row: NaN before
                self.history.setdefault(key, [float("nan")] * rows).append(value)
            for key, column in self.history.items():  # a key missing here: NaN
                if key not in row:
                    column.append(float("nan"))
            return
        first = self._columns is None
        new = [key for key in row if not first and key not in self._columns]
        if first or new:  # (re)write the header; earlier rows get NaN in new columns
            earlier = []
            if new:
                with open(self.csv_path, newline="") as f:
                    earlier = list(csv.DictReader(f))
            self._columns = list(row) if first else self._columns + new
            with open(self.csv_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._columns, restval="nan")
                writer.writeheader()
                writer.writerows(earlier)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns, restval="nan").writerow(row)


def float_values(out, *, prefix, top_k, layer_names, trace, ntk, eos):
    """NumPy results of one probe (`ProbeGraph` output) -> `{key: float}`."""
    values = {}
    main = {k: np.asarray(v) for k, v in out["main"].items() if k != "next"}
    values[f"{prefix}_max_eig"] = float(main["values"][0])
    for i in range(1, top_k):
        values[f"{prefix}_eig_{i + 1}"] = float(main["values"][i])
    values[f"{prefix}_max_eig_residual"] = float(main["residuals"][0])
    values[f"{prefix}_matvecs"] = int(main["steps"])
    for name in layer_names:
        layer = out["layer/" + name]
        values[f"{prefix}_max_eig/{name}"] = float(np.asarray(layer["values"])[0])
        values[f"{prefix}_max_eig_residual/{name}"] = float(np.asarray(layer["residuals"])[0])
    if trace:
        samples = np.asarray(out["trace"])
        values[f"{prefix}_trace"] = float(samples.mean())
        values[f"{prefix}_trace_stderr"] = float(samples.std(ddof=1) / np.sqrt(samples.size))
    if eos:
        values["preconditioned_max_eig"] = float(np.asarray(out["eos"]["values"])[0])
        values["preconditioned_max_eig_residual"] = float(np.asarray(out["eos"]["residuals"])[0])
    if ntk:
        values["ntk_max_eig"] = float(np.asarray(out["ntk"]["values"])[0])
        values["ntk_max_eig_residual"] = float(np.asarray(out["ntk"]["residuals"])[0])
        products = float(np.asarray(out["ntk"]["steps"]))  # 2.5: 2 products and the Gram pair's half
        values["ntk_matvecs"] = int(products) if products.is_integer() else products
    return values
