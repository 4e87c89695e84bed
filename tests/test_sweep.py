"""The sweep skeleton: runs appended as they finish, resume, summaries and rank tests by hand."""

import json
import math

import pytest

from keras_dynloss.experiments import overparam, sweep, width_sweep

pytestmark = pytest.mark.multi_backend
KEY = ("width", "amplitude", "seed")
SETTINGS = dict(steps=10, loss="ce")
CALLS = []


def _job(*, width, amplitude, seed, fail=False):
    """A run: its result is a made-up function of the cell, recorded in CALLS."""
    CALLS.append((width, amplitude, seed))
    if fail:
        raise RuntimeError(f"run {width, amplitude, seed} crashed")
    return dict(width=width, amplitude=amplitude, seed=seed, final_acc=width / 100 + seed / 10)


def _jobs(widths=(8, 16), amplitudes=(1.0, 70.0), seeds=(0, 1), fail=None):
    return [dict(width=w, amplitude=a, seed=s, **({"fail": True} if (w, a, s) == fail else {}))
            for w in widths for a in amplitudes for s in seeds]


def _run(tmp_path, jobs, **kwargs):
    CALLS.clear()
    kwargs.setdefault("settings", SETTINGS)
    return sweep.run(_job, jobs, name="grid", key=KEY, out=str(tmp_path), processes=1,
                     progress=False, **kwargs)


def _lines(tmp_path):
    return [json.loads(line) for line in (tmp_path / "grid.jsonl").read_text().splitlines()]


def test_each_run_is_written_as_it_finishes_and_a_crash_keeps_them(tmp_path):
    with pytest.raises(RuntimeError, match="crashed"):
        _run(tmp_path, _jobs(fail=(16, 1.0, 0)))
    header, *runs = _lines(tmp_path)
    assert header["settings"] == SETTINGS and "git_commit" in header["provenance"]
    assert [tuple(r["run"][k] for k in KEY) for r in runs] == CALLS[:-1]  # before the crash
    assert len(runs) == 4

    # Resume: only the runs the crash lost are trained, the others are read back.
    out = _run(tmp_path, _jobs(), resume=True)
    assert CALLS == [(16, 1.0, 0), (16, 1.0, 1), (16, 70.0, 0), (16, 70.0, 1)]
    assert out["reused_runs"] == 4
    assert [tuple(r[k] for k in KEY) for r in out["rows"]] == [
        (j["width"], j["amplitude"], j["seed"]) for j in _jobs()]  # job order
    assert all(r["final_acc"] == r["width"] / 100 + r["seed"] / 10 for r in out["rows"])
    assert [r["git_commit"] for r in out["rows"]] == [out["provenance"]["git_commit"]] * 8
    assert [("settings" in line) for line in _lines(tmp_path)] == [True] + [False] * 4 + [
        True] + [False] * 4


def test_resume_a_finished_sweep_with_more_seeds(tmp_path):
    _run(tmp_path, _jobs(seeds=(0,)))
    out = _run(tmp_path, _jobs(seeds=(0, 1, 2)), resume=True)
    assert sorted(CALLS) == sorted(_key for _key in ((w, a, s) for w in (8, 16)
                                                     for a in (1.0, 70.0) for s in (1, 2)))
    assert out["reused_runs"] == 4 and len(out["rows"]) == 12
    # Without --resume the file starts again.
    _run(tmp_path, _jobs(seeds=(0,)))
    assert len(CALLS) == 4 and len(_lines(tmp_path)) == 5


def test_resume_needs_the_same_settings(tmp_path):
    _run(tmp_path, _jobs(seeds=(0,)))
    with pytest.raises(ValueError, match=r"Invalid value for argument `settings`.*'steps': "
                                         r"\(10, 20\)"):
        _run(tmp_path, _jobs(), resume=True, settings=dict(SETTINGS, steps=20))


def test_a_line_cut_short_is_skipped_and_the_next_run_starts_a_new_line(tmp_path):
    _run(tmp_path, _jobs(seeds=(0,)))
    text = (tmp_path / "grid.jsonl").read_text()
    (tmp_path / "grid.jsonl").write_text(text[:-20])  # the last run cut short by a crash
    with pytest.warns(UserWarning, match="incomplete"):
        out = _run(tmp_path, _jobs(seeds=(0,)), resume=True)
    assert len(CALLS) == 1 and out["reused_runs"] == 3
    with pytest.warns(UserWarning, match="line 5 is incomplete"):
        assert len(sweep.read_runs(str(tmp_path / "grid.jsonl"))) == 4


def test_clean_json_is_strict():
    import numpy as np

    out = sweep.clean_json(dict(a=np.float32(0.5), b=[np.nan, math.inf], c=np.arange(2),
                                d=np.bool_(True), e=(1.23456789,)), digits=3)
    assert out == dict(a=0.5, b=[None, None], c=[0, 1], d=True, e=[1.23])
    assert json.dumps(out, allow_nan=False)


def test_summary_and_tests_of_a_width_sweep_by_hand():
    acc = {(16, 1.0): [0.80, 0.81, 0.82], (16, 70.0): [0.805, 0.84, 0.85],
           (32, 1.0): [0.5, 0.5, 0.5], (32, 70.0): [0.5, 0.5, 0.5]}
    rows = [dict(width=w, amplitude=a, seed=s, final_acc=v, val_acc=None)
            for (w, a), vs in acc.items() for s, v in enumerate(vs)]
    summary = sweep.summarize(rows, width_sweep.CELL, ["final_acc", "val_acc"])
    assert [(s["width"], s["amplitude"], s["n"]) for s in summary] == list(
        (w, a, 3) for w, a in acc)
    assert summary[1]["final_acc"]["median"] == pytest.approx(0.84)
    assert summary[1]["final_acc"]["std"] == pytest.approx(0.0236290781, rel=1e-8)
    assert summary[1]["val_acc"] is None
    c16, c32 = sweep.compare(rows, width_sweep.CELL, "final_acc", lambda c: (c[0], 1.0))
    # width 16: 0.805 beats 0.80 only; 0.84, 0.85 beat all three: U = 7 of 9; exact null
    # counts of U = 7, 8, 9 (n = 3, 3) are 2, 1, 1 of 20: p = 2 * 4/20.
    assert (c16["width"], c16["u"], c16["pvalue"], c16["method"]) == (
        16, 7.0, pytest.approx(0.4), "exact")
    assert (c32["u"], c32["pvalue"], c32["effect"]) == (4.5, 1.0, 0.5)  # all equal
    assert c16["pvalue_holm"] == pytest.approx(0.8) and c32["pvalue_holm"] == 1.0
    assert not c16["significant"]


def test_overparam_cells_compare_with_cross_entropy_by_hand():
    rows = [dict(amplitude=1.0, period=None, seed=s, test_acc=v, train_acc=1.0)
            for s, v in enumerate([0.80, 0.81, 0.82])]
    rows += [dict(amplitude=10.0, period=p, seed=s, test_acc=v + (p == 2) * 0.005,
                  train_acc=0.99) for p in (1, 2) for s, v in enumerate([0.805, 0.84, 0.85])]
    c1, c2 = sweep.compare(rows, overparam.CELL, "test_acc", lambda c: (None, 1.0))
    assert (c1["period"], c1["u"], c1["pvalue"]) == (1, 7.0, pytest.approx(0.4))
    # period 2: 0.81 beats 0.80 and ties 0.81 -> U = 7.5; one tied pair:
    # σ² = 9/12 (7 - 6/30) = 5.1, z = (3 - ½)/√5.1, p = erfc(z/√2)
    p2 = math.erfc(2.5 / math.sqrt(5.1) / math.sqrt(2))
    assert (c2["u"], c2["method"]) == (7.5, "asymptotic")
    assert c2["pvalue"] == pytest.approx(p2, rel=1e-10)
    assert c1["pvalue_holm"] == pytest.approx(2 * p2) == c2["pvalue_holm"]
    summary = sweep.summarize(rows, overparam.CELL, list(overparam.METRICS))
    assert [(s["period"], s["amplitude"], s["n"]) for s in summary] == [
        (None, 1.0, 3), (1, 10.0, 3), (2, 10.0, 3)]  # cross-entropy first
    table = overparam.table(dict(metrics=overparam.METRICS, summary=summary,
                                 comparison=[c1, c2]))
    assert "| 1 (CE) | any | 3 | 0.810 ± 0.010 | 0.810 [0.805, 0.815] | 0/3 |" in table
    assert "| test accuracy | 10 | 2 | 0.83 | 7.5 | 0.268 | 0.537 | no |" in table  # 7.5 / 9


def test_compare_reference_by_hand():
    ours = [dict(width=16, amplitude=70.0, seed=s, final_acc=v)
            for s, v in enumerate([0.5, 0.6, 0.7])]
    ref = [dict(width=16, amplitude=70.0, seed=s, final_acc=v)
           for s, v in enumerate([0.8, 0.9, 0.95])]
    ref.append(dict(width=99, amplitude=70.0, seed=0, final_acc=0.9))  # not in ours
    (c,) = width_sweep.compare_reference(ours, ref)
    # every reference seed beats every one of ours: U = 0, exact p = 2 / C(6, 3)
    assert (c["width"], c["u"], c["effect"]) == (16, 0.0, 0.0)
    assert c["pvalue"] == pytest.approx(0.1) and c["pvalue_holm"] == pytest.approx(0.1)
    assert c["ref"]["median"] == pytest.approx(0.9) and c["ref"]["above"] == 1
    assert c["ours"]["iqr"] == pytest.approx(0.1)


def test_width_sweep_table_with_the_reference_and_a_diverged_run():
    rows = [dict(width=16, amplitude=a, seed=s, final_acc=v, val_acc=None,
                 diverged=(a, s) == (70.0, 2))
            for a, vs in ((1.0, [0.4, 0.5, 0.6]), (70.0, [0.5, 0.6, 0.7])) for s, v in
            enumerate(vs)]
    ref = [dict(width=16, amplitude=70.0, seed=s, final_acc=v)
           for s, v in enumerate([0.8, 0.9, 0.95])]
    result = dict(config=dict(loss="ce"), metrics={"final_acc": "training accuracy"},
                  rows=rows, summary=sweep.summarize(rows, width_sweep.CELL, ["final_acc"]),
                  comparison=[], reference_comparison=width_sweep.compare_reference(rows, ref))
    table = width_sweep.table(result)
    assert "| 16 | DCE A=70 | 3 | 0.600 ± 0.100 | 0.600 [0.550, 0.650] | 0/3 |" in table
    assert "1 run(s) ended with a non-finite loss" in table and "A=70 seed 2" in table
    assert ("| 16 | DCE A=70 | 0.600 [0.550, 0.650] | 0/3 | 0.900 [0.850, 0.925] | 1/3 | "
            "0.00 | 0 | 0.1 | 0.1 | no |") in table


def test_an_unknown_option_is_rejected_before_training():
    with pytest.raises(TypeError, match=r"Unexpected option\(s\) \['widht'\]"):
        width_sweep.run(widht=(8,))
