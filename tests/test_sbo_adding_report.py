"""scripts/sbo_adding_report.py: real runs of the adding presets end to end, and the figure's verdicts on
synthetic curves with known answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPO, load_script

SCRIPT = REPO / "scripts" / "sbo_adding_report.py"
TINY = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.eval_batch_size=32", "model.hidden_size=8",
        "trainer.eval_every_n_steps=2", "trainer.device=cpu"]


def _module():
    return load_script("sbo_adding_report")


def _script(*args: str, runs) -> subprocess.CompletedProcess:
    env = {**os.environ, "RNNREPRO_RUNS": str(runs)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_run_reuses_and_refuses_another_budget(tmp_path):
    runs = tmp_path / "runs"
    done = _script("run", "--T", "100", "--variants", "sparse_sgd", "rnn", "--steps", "4", "--", *TINY, runs=runs)
    assert done.returncode == 0, done.stderr[-2000:]
    for variant in ("sparse_sgd", "rnn"):
        summary = json.loads((runs / "sbo_adding" / f"adding_t100_{variant}" / "seed_0" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 4
        assert summary["experiment"] == f"sbo_rnn/adding_t100_{variant}"
    again = _script("run", "--T", "100", "--variants", "rnn", "--steps", "4", "--", *TINY, runs=runs)
    assert again.returncode == 0 and "reuse" in again.stdout
    other = _script("run", "--T", "100", "--variants", "rnn", "--steps", "6", "--", *TINY, runs=runs)
    assert other.returncode != 0 and "max_steps=4, not 6" in other.stderr  # the finished run is kept
    out = tmp_path / "out"
    report = _script("report", "--out", str(out), runs=runs)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "wrote" in report.stdout and not (out / "adding_figure_t500.md").exists()  # only the T that ran
    text = (out / "adding_figure_t100.md").read_text()
    assert "reduced: 4 of 25,000" in text and (out / "adding_figure_t100.png").exists()
    assert "Some runs used a reduced budget" in text
    assert str(tmp_path) not in text  # no machine paths


def _write_run(root, T: int, variant: str, mse: list[float], every: int = 250) -> None:
    folder = root / "sbo_adding" / f"adding_t{T}_{variant}" / "seed_0"
    folder.mkdir(parents=True)
    steps = [every * (i + 1) for i in range(len(mse))]
    pd.DataFrame({"step": steps, "split": "train", "loss": mse}).to_csv(folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"status": "completed", "steps": steps[-1], "best_val": mse[-1],
                                                     "wall_time_s": 60.0, "git_sha": "abc", "git_dirty": False}))


def test_verdicts_on_curves_with_known_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNREPRO_RUNS", str(tmp_path))
    report = _module()
    fast = [0.2, 0.1, 0.05, 0.02, 0.005] + [0.001] * 10       # below 0.01 at step 1,250
    slow = [0.2] * 30 + [0.005]                                # first at step 7,750: beyond 2 x 1.5k
    for variant in ("dense_sgd", "dense_snag"):
        _write_run(tmp_path, 100, variant, fast)
    _write_run(tmp_path, 100, "dense_shb", slow)
    _write_run(tmp_path, 100, "sparse_sgd", [0.2] * 20 + [0.004] * 5)   # step 5,250 <= 2 x 7k
    _write_run(tmp_path, 100, "rnn", [0.18, 0.16, 0.17, 0.15, 0.2, 0.19])
    curves, _ = report.load_curves()
    assert report.first_solved(curves[(curves["T"] == 100) & (curves.variant == "dense_sgd")]) == 1250
    lines = report.verdicts(curves, 100)
    dense, sparse_momentum, sparse_sgd, rnn = lines
    assert "does not hold" in dense and "dense SHB at 7,750 steps" in dense and "dense SGD at 1,250 steps" in dense
    assert "not run at T = 100" in sparse_momentum
    assert "holds here" in sparse_sgd and "5,250" in sparse_sgd
    assert "holds here" in rnn and "[0.190, 0.200]" in rnn
    _write_run(tmp_path, 500, "rnn", [0.2, 0.05, 0.04, 0.04, 0.04, 0.03])
    assert "does not hold" in report.verdicts(report.load_curves()[0], 500)[-1]


def test_a_short_run_that_has_not_reached_the_criterion_is_undecided(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNREPRO_RUNS", str(tmp_path))
    report = _module()
    _write_run(tmp_path, 500, "sparse_sgd", [0.2] * 24)          # 6,000 steps run, never solved: < 2 x 7k
    _write_run(tmp_path, 500, "dense_sgd", [0.2] * 24)           # 6,000 >= 2 x 1.5k, never solved: fails
    _write_run(tmp_path, 500, "dense_snag", [0.2] * 3 + [0.001])  # step 1,000
    dense, _, sparse_sgd, _ = report.verdicts(report.load_curves()[0], 500)
    assert "does not hold" in dense and "dense SGD never (6,000 steps run)" in dense
    assert "undecided at this budget" in sparse_sgd and "sparse SGD never (6,000 steps run)" in sparse_sgd
    _write_run(tmp_path, 100, "sparse_sgd", [0.2] * 56)          # 14,000 steps run, never solved: fails
    assert "does not hold" in report.verdicts(report.load_curves()[0], 100)[2]


def test_report_writes_one_file_per_T_and_keeps_the_other(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNREPRO_RUNS", str(tmp_path / "runs"))
    report = _module()
    out = tmp_path / "out"
    out.mkdir()
    (out / "adding_figure_t100.md").write_text("committed earlier")
    _write_run(tmp_path / "runs", 500, "rnn", [0.2] * 4)
    paths = report.report(str(out))
    assert [os.path.basename(p) for p in paths] == ["adding_figure_t500.md"]
    assert (out / "adding_figure_t100.md").read_text() == "committed earlier"
    text = (out / "adding_figure_t500.md").read_text()
    assert "T = 500" in text and "adding_figure_t500.png" in text and "T = 100" not in text


def test_report_without_runs_says_what_to_do(tmp_path):
    done = _script("report", "--out", str(tmp_path / "out"), runs=tmp_path)
    assert done.returncode == 0 and "run `python scripts/sbo_adding_report.py run` first" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_bad_budget_is_refused(tmp_path, steps):
    done = _script("run", "--steps", steps, runs=tmp_path)
    assert done.returncode != 0 and "--steps must be >= 1" in done.stderr
