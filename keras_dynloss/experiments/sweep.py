"""The skeleton of the grids (`width-sweep`, `overparam`): run, summarise, compare, write.

A sweep is a list of jobs, each the keyword arguments of one run of a module-level function
that returns a JSON-ready dict (a row). `run` trains the jobs, inline or in a pool of worker
processes, and appends each finished row to `OUT/<name>.jsonl` at once, so that a crash or
Ctrl-C loses at most the runs in progress. That file holds one line per session and per run:

    {"settings": {...}, "provenance": {...}}   where a session (a start or a resume) begins
    {"run": {...}}                             each run, as it finishes

`run(..., resume=True)` reads it back and trains only the jobs it lacks (more seeds,
amplitudes or periods; or what a crash left), provided the settings are the same. Rows are
grouped into cells by the sweep's `cell` fields (x axis, then series: e.g. width and A) and
each metric of a cell is described (`stats.describe`) and tested against a baseline cell
(`stats.mann_whitney`, Holm over each metric's family).
"""

import json
import math
import os
import time
import warnings

import numpy as np

from keras_dynloss._checks import invalid
from keras_dynloss.experiments import stats
from keras_dynloss.experiments.provenance import provenance
from keras_dynloss.experiments.workers import run_jobs

__all__ = ["run", "read_runs", "cells", "summarize", "compare", "rank_tests", "table", "write",
           "save_figure", "write_json", "clean_json"]


def clean_json(obj, digits=None):
    """`obj` with NumPy values made plain and NaN / inf as None (strict JSON); floats rounded
    to `digits` significant digits if given."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [clean_json(v, digits) for v in obj]
    if isinstance(obj, (float, np.floating)):
        obj = float(obj)
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}") if digits else obj
    return obj.item() if isinstance(obj, np.generic) else obj


def write_json(result, path, *, digits=None, indent=1):
    """Writes `clean_json(result)` to `path` (creating its folder); returns `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean_json(result, digits), f, indent=indent)
    return path


def _key(row, fields):
    return tuple(row[k] for k in fields)


def read_runs(path, settings=None):
    """The rows of a sweep's JSON-lines file, each with the `git_commit` of its session.

    Args:
        path: the `.jsonl` file.
        settings: if given, every session in the file must have these settings.

    Returns:
        A list of row dicts, in the order they finished. A line cut short by a crash is
        skipped with a warning.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    rows, commit = [], None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is incomplete (a run cut short by a "
                          "crash); skipped.", stacklevel=2)
            continue
        if "settings" in record:
            if settings is not None and record["settings"] != clean_json(settings):
                diff = {k: (record["settings"].get(k), v)
                        for k, v in clean_json(settings).items()
                        if record["settings"].get(k) != v}
                raise invalid("settings", f"those of the runs in {path} to resume them "
                              "(differences as (file, now))", diff)
            commit = record["provenance"].get("git_commit")
        else:
            rows.append(dict(record["run"], git_commit=commit))
    return rows


def run(fn, jobs, *, name, settings, key, out=None, resume=False, processes=None,
        progress=True):
    """Runs `fn(**job)` for each job, appending each finished row to `out/<name>.jsonl`.

    Args:
        fn: a module-level function (picklable) returning a JSON-ready dict that holds the
            `key` fields.
        jobs: keyword dicts, one per run.
        name: the sweep's name (file name and progress label).
        settings: JSON-ready dict of everything but the grid; a resume needs the same.
        key: names of the fields that identify a run (e.g. `("width", "amplitude", "seed")`).
        out: folder of the JSON-lines file (None: no file).
        resume: reuse the runs already in the file (with the same settings).
        processes: worker processes (see `run_jobs`).
        progress: a progress bar with an ETA.

    Returns:
        `{rows, reused_runs, provenance, seconds}`: one row per job, in job order, each with
        the `git_commit` of the session that ran it.
    """
    start = time.perf_counter()
    info = provenance()
    path = None if out is None else os.path.join(out, f"{name}.jsonl")
    done = {}
    if resume and path is not None and os.path.exists(path):
        done = {_key(r, key): r for r in read_runs(path, settings)}
    todo = [job for job in jobs if _key(job, key) not in done]
    log = None
    if path is not None:
        os.makedirs(out, exist_ok=True)
        cut = False
        if done:
            with open(path) as f:
                cut = not f.read().endswith("\n")  # a line cut short: end it first
        log = open(path, "a" if done else "w")
        header = dict(settings=settings, provenance=info)
        log.write(("\n" if cut else "") + json.dumps(clean_json(header)) + "\n")
        log.flush()
    new = {}

    def finished(row):
        new[_key(row, key)] = dict(row, git_commit=info["git_commit"])
        if log is not None:
            log.write(json.dumps(clean_json(dict(run=row))) + "\n")
            log.flush()

    try:
        run_jobs(fn, todo, processes=processes, progress=progress, on_result=finished)
    finally:
        if log is not None:
            log.close()
    rows = [new.get(_key(job, key)) or done[_key(job, key)] for job in jobs]
    return dict(rows=rows, reused_runs=len(jobs) - len(todo), provenance=info,
                seconds=time.perf_counter() - start)


def cells(rows, cell, metric):
    """`{cell values: [metric of each run]}` over the rows with the metric, sorted (None
    first)."""
    groups = {}
    for row in rows:
        if row.get(metric) is not None:
            groups.setdefault(_key(row, cell), []).append(row[metric])
    return dict(sorted(groups.items(), key=lambda kv: [(v is not None, v) for v in kv[0]]))


def summarize(rows, cell, metrics, *, threshold=0.9):
    """Per cell (those of the first metric): its `cell` fields, `n`, and for each metric a
    `stats.describe` dict (None where no run of the cell has the metric)."""
    groups = {metric: cells(rows, cell, metric) for metric in metrics}
    out = []
    for values, runs in groups[metrics[0]].items():
        entry = dict(zip(cell, values), n=len(runs))
        for metric in metrics:
            got = groups[metric].get(values)
            entry[metric] = stats.describe(got, threshold=threshold).as_dict() if got else None
        out.append(entry)
    return out


def rank_tests(pairs):
    """`stats.mann_whitney(x, y)` for each `(fields, x, y)`, Holm-adjusted over the family.

    Returns a list of `{**fields, u, pvalue, method, n_x, n_y, effect, pvalue_holm,
    significant}` (significant: Holm-adjusted p < 0.05).
    """
    out = [dict(fields, **stats.mann_whitney(x, y).as_dict()) for fields, x, y in pairs]
    for test, adjusted in zip(out, stats.holm([t["pvalue"] for t in out])):
        test.update(pvalue_holm=adjusted, significant=adjusted < 0.05)
    return out


def compare(rows, cell, metric, baseline):
    """Each cell's `metric` against its baseline cell's, Holm over the cells.

    Args:
        rows, cell: as for `summarize`.
        metric: the field compared.
        baseline: cell values -> the values of the cell it is compared with (None: none).

    Returns:
        `rank_tests`'s list, each with `metric` and the cell's fields; `effect` is the
        probability that a run of the cell beats a run of its baseline.
    """
    groups = cells(rows, cell, metric)
    pairs = [(dict(zip(cell, values), metric=metric), runs, groups[baseline(values)])
             for values, runs in groups.items()
             if baseline(values) not in (None, values) and baseline(values) in groups]
    return rank_tests(pairs)


def markdown(header, lines):
    """A Markdown table of a header and lines (lists of cells)."""
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def describe_cells(d):
    """`mean ± std`, `median [q1, q3]`, `above/n` of a `describe` dict ("—" for None)."""
    if d is None:
        return ["—"] * 3
    std = f" ± {d['std']:.3f}" if d["std"] is not None else ""
    return [f"{d['mean']:.3f}{std}", f"{d['median']:.3f} [{d['q1']:.3f}, {d['q3']:.3f}]",
            f"{d['above']}/{d['n']}"]


def table(result, columns, label):
    """Markdown: a line per cell (its label, n and each metric described), then the tests.

    Args:
        result: a sweep result (`metrics`, `summary`, `comparison`).
        columns: names of the label's columns.
        label: a summary or comparison dict -> its cell's label, a list of `columns` strings.
    """
    metrics = result["metrics"]
    header = [*columns, "n"] + [f"{metrics[m]}: {what}" for m in metrics
                                for what in ("mean ± std", "median [Q1, Q3]", "> 0.9")]
    lines = [[*label(s), s["n"], *sum((describe_cells(s[m]) for m in metrics), [])]
             for s in result["summary"]]
    text = markdown(header, lines)
    if result.get("comparison"):
        tests = [[metrics[c["metric"]], *label(c), f"{c['effect']:.2f}", f"{c['u']:g}",
                  stats.fmt_p(c["pvalue"]), stats.fmt_p(c["pvalue_holm"]),
                  "yes" if c["significant"] else "no"] for c in result["comparison"]]
        text += ("\n\nEach cell against its baseline (two-sided Mann–Whitney U, Holm over the "
                 "cells of a metric; effect = P(a run of the cell beats a baseline run)):\n\n"
                 + markdown(["metric", *columns, "effect", "U", "p", "p (Holm)",
                             "significant at 5 %"], tests))
    return text


def save_figure(make, path, *, dpi=100):
    """Saves the figure `make()` returns to `path`; where matplotlib is missing, warns and
    returns None instead of the path."""
    try:
        fig = make()
    except ImportError as err:
        warnings.warn(f"No {os.path.basename(path)}: {err}", stacklevel=3)
        return None
    fig.savefig(path, dpi=dpi)
    return path


def write(result, out, name, *, text, figure):
    """Writes `out/<name>.json`, `.md` (`text`) and `.png` (`figure()`, see `save_figure`);
    returns the paths written."""
    paths = [write_json(result, os.path.join(out, f"{name}.json")),
             os.path.join(out, f"{name}.md")]
    with open(paths[-1], "w") as f:
        f.write(text + "\n")
    png = save_figure(figure, os.path.join(out, f"{name}.png"))
    return paths if png is None else paths + [png]
