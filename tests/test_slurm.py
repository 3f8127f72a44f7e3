"""The SLURM path against a real scheduler (hydra/launcher=slurm, submitit). `.ci/run` brings up a one-node cluster
(`scripts/slurm-single-node.sh up`); where no scheduler answers (a laptop), every test here skips."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from helpers import REPO


def _scheduler_answers() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s.strip() in ("idle", "mix", "alloc") for s in states.splitlines())


pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(not _scheduler_answers(), reason="no SLURM scheduler answers here")]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

TINY = ["trainer.max_epochs=1000", "trainer.limit_eval_batches=1", "data.pixels_per_step=28", "data.download=false",
        "trainer.device=cpu", "data.batch_size=16", "trainer.num_threads=1", "trainer.deterministic=true",
        "trainer.progress_bar=false"]
SLURM = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=15"]


def _env():
    return dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def _multirun(args, cwd, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "run.py"), "-m", *SLURM, *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_three_jobs_write_three_summaries_and_a_complete_sweep_summary(tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    result = _multirun(["seed=0,1,2", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}", "trainer.max_steps=2",
                        "model.hidden_size=8", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/summary.json")) == [0, 1, 2]
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(table.job) == [0, 1, 2] and (table.status == "completed").all()
    assert all(json.loads(p.read_text())["host"] for p in sweep.glob("*/summary.json"))


def test_a_bad_value_fails_its_job_alone(tmp_path, mnist_root):
    sweep = tmp_path / "sweep"
    result = _multirun(["model.hidden_size=8,0,12", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}",
                        "trainer.max_steps=2", *TINY], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(table.status) == ["completed", "rejected", "completed"]
    assert "model.hidden_size: must be >= 1" in table.error[1]


def test_preempted_job_is_requeued_and_ends_identical_to_an_uninterrupted_run(tmp_path, mnist_root):
    common = [f"data.root={mnist_root}", "trainer.max_steps=400", "trainer.eval_every_n_steps=50",
              "model.hidden_size=8", "trainer.log_every_s=0.2", *TINY]
    reference = subprocess.run([sys.executable, str(REPO / "run.py"), *common, f"hydra.run.dir={tmp_path / 'ref'}"],
                               cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    sweep = tmp_path / "sweep"
    driver = subprocess.Popen([sys.executable, str(REPO / "run.py"), "-m", *SLURM, "seed=0", *common, "resume=auto",
                               f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = sweep / "0" / "run.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and " steps/s " in log.read_text()):
        time.sleep(0.2)  # the job trains: the harness's handler is installed
    (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=30)  # what preemption sends
    _, err = driver.communicate(timeout=900)
    assert driver.returncode == 0, err[-3000:]

    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["segments"]) == 2, summary["segments"]
    assert 0 < summary["segments"][1]["from_step"] < 400  # the requeued job continued from last.pt
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    for key in ("steps", "best_val", "best_step", "test_at_best_val", "test_last", "val_last"):
        assert summary[key] == ref[key], key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ref" / "metrics.csv").drop(columns="wall_time_s"),
                                  pd.read_csv(sweep / "0" / "metrics.csv").drop(columns="wall_time_s"))


def test_reproduce_tables_fans_its_runs_out_over_slurm(tmp_path, mnist_root, monkeypatch, capsys):
    import scripts.reproduce_tables as rt

    results = tmp_path / "results"
    (results / "expected").mkdir(parents=True)
    expected = pd.read_csv(REPO / "results" / "expected" / "sbo_rnn.csv").head(1)  # one preset, two smoke seeds
    expected.to_csv(results / "expected" / "sbo_rnn.csv", index=False)
    monkeypatch.setattr(rt, "RESULTS", results)
    argv = ["--tier", "smoke", "--paper", "sbo_rnn", "--runs-dir", str(tmp_path / "runs"), "--launcher", "slurm",
            "--jobs", "2", f"data.root={mnist_root}", "data.download=false", "model.hidden_size=8",
            "data.pixels_per_step=28", "trainer.device=cpu"]
    assert rt.main(argv) == 0
    assert capsys.readouterr().out.count("--wait --requeue --parsable") == 2
    run_dirs = sorted(p.parent for p in (tmp_path / "runs").rglob("summary.json"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:  # each run was a SLURM job: its scheduler output is there, named by the job id it ran in
        (out,) = run_dir.glob("slurm-*.out")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and out.name == f"slurm-{summary['segments'][0]['slurm_job_id']}.out"
    assert pd.read_csv(results / "sbo_rnn" / "pixel_mnist.smoke.csv").seeds.tolist() == [2]
