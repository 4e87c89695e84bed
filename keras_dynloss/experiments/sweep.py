"""The skeleton of the grids (`width-sweep`, `overparam`): run, summarise, compare, write.

`run` appends each finished run to `OUT/<name>.jsonl` at once, so that a crash loses at most
the runs in progress, and `resume=True` trains only the runs the file lacks:

    {"settings": {...}, "provenance": {...}}   where a session (a start or a resume) begins
    {"run": {...}}                             each run, as it finishes
"""

import json
import math
import os
import pathlib
import time
import warnings

import numpy as np

from keras_dynloss._checks import invalid
from keras_dynloss.experiments import stats
from keras_dynloss.experiments.provenance import provenance
from keras_dynloss.experiments.workers import run_jobs

__all__ = ["run", "read_runs", "cells", "summarize", "compare", "rank_tests", "result",
           "table", "write", "clean_json", "options"]


def options(defaults, given):
    """`defaults` updated with `given`, whose names must be among the defaults'."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"Unexpected option(s) {unknown}; expected some of {sorted(defaults)}")
    return dict(defaults, **given)


def clean_json(obj, digits=None):
    """`obj` as strict JSON (NumPy values plain, NaN / inf None, floats to `digits` digits)."""
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


def _key(row, fields):
    return tuple(row[k] for k in fields)


def read_runs(path, settings=None):
    """The rows of a sweep's JSON-lines file in the order they finished, each with the
    `git_commit` of its session; every session must have `settings` if given. A line cut
    short by a crash is skipped with a warning."""
    rows, commit = [], None
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is incomplete (a run cut short by a crash); "
                          "skipped.", stacklevel=2)
            continue
        if "run" in record:
            rows.append(dict(record["run"], git_commit=commit))
            continue
        now, then = clean_json(settings), record["settings"]
        if settings is not None and then != now:
            diff = {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v}
            raise invalid("settings", f"those of the runs in {path} to resume them "
                          "(differences as (file, now))", diff)
        commit = record["provenance"].get("git_commit")
    return rows


def run(fn, jobs, *, name, settings, key, out=None, resume=False, processes=None,
        progress=True):
    """Runs `fn(**job)` for each job, appending each finished row to `out/<name>.jsonl`.

    Args:
        fn, jobs, processes, progress: as for `workers.run_jobs`; `fn` returns a JSON-ready
            dict with the `key` fields, those that identify a run (e.g. `("width", "seed")`).
        name: the sweep's name (of the file).
        settings: JSON-ready dict of everything but the grid; a resume needs the same.
        out: folder of the JSON-lines file (None: no file).
        resume: reuse the runs already in the file.

    Returns:
        `{rows, reused_runs, provenance, seconds}`: a row per job, in job order, each with the
        `git_commit` of the session that ran it.
    """
    start, info = time.perf_counter(), provenance()
    path = os.devnull if out is None else os.path.join(out, f"{name}.jsonl")
    done = {}
    if resume and out is not None and os.path.exists(path):
        done = {_key(r, key): r for r in read_runs(path, settings)}
    todo = [job for job in jobs if _key(job, key) not in done]
    if out is not None:
        os.makedirs(out, exist_ok=True)
    with open(path, "a+" if done else "w") as log:
        if done:  # a line cut short by a crash: end it first
            log.seek(0)
            log.write("" if log.read().endswith("\n") else "\n")
        log.write(json.dumps(clean_json(dict(settings=settings, provenance=info))) + "\n")

        def finished(row):
            done[_key(row, key)] = dict(row, git_commit=info["git_commit"])
            log.write(json.dumps(clean_json(dict(run=row))) + "\n")
            log.flush()

        run_jobs(fn, todo, processes=processes, progress=progress, on_result=finished)
    return dict(rows=[done[_key(job, key)] for job in jobs], reused_runs=len(jobs) - len(todo),
                provenance=info, seconds=time.perf_counter() - start)


def cells(rows, cell, metric):
    """`{cell values: [metric of each run]}` of the rows with the metric, sorted (None first)."""
    groups = {}
    for row in rows:
        if row.get(metric) is not None:
            groups.setdefault(_key(row, cell), []).append(row[metric])
    return dict(sorted(groups.items(), key=lambda kv: [(v is not None, v) for v in kv[0]]))


def summarize(rows, cell, metrics, *, threshold=0.9):
    """Per cell (those of the first metric): its `cell` fields, `n`, and each metric's
    `stats.describe` dict (None where no run of the cell has the metric)."""
    groups = {metric: cells(rows, cell, metric) for metric in metrics}
    out = []
    for values, runs in groups[metrics[0]].items():
        out.append(dict(zip(cell, values), n=len(runs)))
        for metric in metrics:
            got = groups[metric].get(values)
            out[-1][metric] = stats.describe(got, threshold=threshold).as_dict() if got else None
    return out


def rank_tests(pairs):
    """`stats.mann_whitney(x, y)` of each `(fields, x, y)` as a dict with the fields, plus
    `pvalue_holm` (Holm over the pairs) and `significant` (`pvalue_holm < 0.05`)."""
    out = [dict(fields, **stats.mann_whitney(x, y).as_dict()) for fields, x, y in pairs]
    for test, adjusted in zip(out, stats.holm([t["pvalue"] for t in out])):
        test.update(pvalue_holm=adjusted, significant=adjusted < 0.05)
    return out


def compare(rows, cell, metric, baseline):
    """`rank_tests` of each cell's `metric` against its baseline cell's, with `metric` and the
    cell's fields; `baseline` maps cell values to the baseline's (None: no test)."""
    groups = cells(rows, cell, metric)
    return rank_tests([(dict(zip(cell, values), metric=metric), runs, groups[baseline(values)])
                       for values, runs in groups.items()
                       if baseline(values) not in (None, values) and baseline(values) in groups])


def result(name, runs, *, config, cell, metrics, baseline, tested=None):
    """A sweep's JSON-ready result: `experiment`, `config`, `cell`, `metrics` (field: label),
    `summary` (`summarize`), `comparison` (`compare` of each `tested` metric, default all),
    and `run`'s `rows`, `reused_runs`, `provenance`, `seconds`."""
    rows = runs["rows"]
    comparison = [c for m in tested or metrics for c in compare(rows, cell, m, baseline)]
    return dict(experiment=name, config=config, cell=list(cell), metrics=dict(metrics),
                summary=summarize(rows, cell, list(metrics)), comparison=comparison, **runs)


def markdown(header, lines):
    """A Markdown table of a header and lines (lists of cells)."""
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


def described(d):
    """`mean ± std`, `median [q1, q3]`, `above/n` of a `describe` dict ("—" for None)."""
    if d is None:
        return ["—"] * 3
    std = f" ± {d['std']:.3f}" if d["std"] is not None else ""
    return [f"{d['mean']:.3f}{std}", f"{d['median']:.3f} [{d['q1']:.3f}, {d['q3']:.3f}]",
            f"{d['above']}/{d['n']}"]


def tested(c):
    """`effect`, `U`, `p`, `p (Holm)` and `significant at 5 %` of a `rank_tests` dict."""
    return [f"{c['effect']:.2f}", f"{c['u']:g}", stats.fmt_p(c["pvalue"]),
            stats.fmt_p(c["pvalue_holm"]), "yes" if c["significant"] else "no"]


TESTS_HEADER = ["effect", "U", "p", "p (Holm)", "significant at 5 %"]


def table(result, columns, label):
    """Markdown: a line per cell (`label(summary)`, a list of `columns` strings, n and each
    metric described), then the tests against the baselines."""
    metrics = result["metrics"]
    header = [*columns, "n"] + [f"{metrics[m]}: {what}" for m in metrics
                                for what in ("mean ± std", "median [Q1, Q3]", "> 0.9")]
    text = markdown(header, [[*label(s), s["n"], *sum((described(s[m]) for m in metrics), [])]
                             for s in result["summary"]])
    if result.get("comparison"):
        lines = [[metrics[c["metric"]], *label(c), *tested(c)] for c in result["comparison"]]
        text += ("\n\nEach cell against its baseline (two-sided Mann–Whitney U, Holm over the "
                 "cells of a metric; effect = P(a run of the cell beats a baseline run)):\n\n"
                 + markdown(["metric", *columns, *TESTS_HEADER], lines))
    return text


def write(result, out, name, *, text=None, figure=None, digits=None, indent=1, dpi=100):
    """Writes `out/<name>.json`, `.md` (`text`, if given) and `.png` (the figure `figure()`
    returns; where matplotlib is missing, a warning instead); returns the paths written."""
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, name)
    paths = [base + ".json"]
    pathlib.Path(paths[0]).write_text(json.dumps(clean_json(result, digits), indent=indent))
    if text is not None:
        paths.append(base + ".md")
        pathlib.Path(paths[-1]).write_text(text + "\n")
    try:
        figure().savefig(base + ".png", dpi=dpi)
    except ImportError as err:
        warnings.warn(f"No {name}.png: {err}", stacklevel=2)
        return paths
    return paths + [base + ".png"]
