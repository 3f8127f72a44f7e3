"""The fault matrix (issue 13): stop signals, the run-dir lock, partial and foreign files, NaN at evaluation, one
bad job in a sweep. Each test reproduces a fault that lost or mislabelled a result before its fix."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from helpers import REPO
from rnnrepro.api import Interrupted, run, run_dir_lock
from rnnrepro.config import ConfigError
from rnnrepro.training.trainer import Trainer

DETERMINISTIC = ["model=lstm", "model.impl=cell", "trainer.max_epochs=3", "trainer.max_steps=null",
                 "trainer.deterministic=true", "data.batch_size=32", "trainer.limit_eval_batches=null",
                 "optimizer=sgd", "optimizer.lr=0.05", "scheduler=linear", "trainer.eval_every_n_steps=4"]


def _signal_at(monkeypatch, n_steps, signum=signal.SIGTERM):
    """Sends this process ``signum`` once the trainer has taken n_steps optimizer steps, as SLURM would."""
    original = Trainer._update

    def update(self):
        step = original(self)
        if step == n_steps:
            os.kill(os.getpid(), signum)
        return step

    monkeypatch.setattr(Trainer, "_update", update)


def test_sigterm_writes_last_pt_and_interrupted_then_resume_is_exact(compose_cfg, tmp_path, monkeypatch):
    reference = run(compose_cfg(*DETERMINISTIC, output_dir=tmp_path / "ref"))
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        _signal_at(patch, 5)  # between checkpoints (every 4 steps) and mid-epoch (3 batches per epoch)
        with pytest.raises(Interrupted) as stop:
            run(compose_cfg(*DETERMINISTIC, output_dir=out))
    assert stop.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before  # handler restored
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM at optimizer step 5" in summary["error"]
    assert torch.load(out / "last.pt", weights_only=False)["progress"]["step"] == 5
    assert not (out / ".lock").exists()

    resumed = run(compose_cfg(*DETERMINISTIC, "resume=auto", output_dir=out))
    assert resumed["status"] == "completed" and resumed["steps"] == reference["steps"] == 9
    for key in ("best_val", "best_step", "test_at_best_val", "test_last", "val_last"):
        assert resumed[key] == reference[key], key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ref" / "metrics.csv").drop(columns="wall_time_s"),
                                  pd.read_csv(out / "metrics.csv").drop(columns="wall_time_s"))


def _cli(args, cwd, **kwargs):
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_sigterm_through_the_cli_exits_143_and_resume_auto_finishes(tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    args = [f"data.root={mnist_root}", "data.download=false", f"hydra.run.dir={run_dir}", "model.hidden_size=8",
            "data.pixels_per_step=28", "data.batch_size=16", "trainer.max_epochs=100000", "trainer.max_steps=200",
            "trainer.eval_every_n_steps=50", "trainer.limit_eval_batches=1", "trainer.log_every_s=0.2",
            "trainer.device=cpu"]
    job = _cli(args, tmp_path)
    log = run_dir / "run.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and " steps/s " in log.read_text()):
        time.sleep(0.1)  # training has started (a progress line), so the harness's handler is installed
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, err[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"] and "interrupted:" in err
    assert (run_dir / "last.pt").exists() and 0 < summary["steps"] < 200

    again = _cli([*args, "resume=auto"], tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    final = json.loads((run_dir / "summary.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 200
    assert final["segments"][1]["from_step"] == summary["steps"]


def _kill_args(mnist_root, run_dir):
    return [f"data.root={mnist_root}", "data.download=false", f"hydra.run.dir={run_dir}", "model.hidden_size=8",
            "data.pixels_per_step=28", "data.batch_size=16", "trainer.max_epochs=100000", "trainer.max_steps=1500",
            "trainer.eval_every_n_steps=100", "trainer.limit_eval_batches=1", "trainer.device=cpu",
            "trainer.deterministic=true", "trainer.progress_bar=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_root):
    run_dir = tmp_path_factory.mktemp("kill") / "reference"
    started = time.perf_counter()
    job = _cli(_kill_args(mnist_root, run_dir), run_dir.parent)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-2000:]
    return run_dir, time.perf_counter() - started  # its seconds, start-up included


def _finish_and_compare(args, run_dir, uninterrupted, cwd):
    """resume=auto once more: the run must end as the uninterrupted one did, with nothing half-written left."""
    reference, _ = uninterrupted
    job = _cli([*args, "resume=auto"], cwd)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-3000:]
    final, ref = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert final["status"] == "completed"
    for key in ("steps", "best_val", "best_step", "test_at_best_val", "test_last", "val_last", "test_at_best_val_all"):
        assert final[key] == ref[key], key
    pd.testing.assert_frame_equal(pd.read_csv(reference / "metrics.csv").drop(columns="wall_time_s"),
                                  pd.read_csv(run_dir / "metrics.csv").drop(columns="wall_time_s"))
    for name in ("last.pt", "best.pt"):
        ours, theirs = (torch.load(d / name, weights_only=False)["model"] for d in (run_dir, reference))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert not list(run_dir.glob("*tmp*")) and not (run_dir / ".lock").exists()
    return final


KILLS_DURING_WRITES = {
    "first-checkpoint": [("last.pt", 1)],  # before any last.pt exists: resume=auto restarts it
    "later-checkpoint": [("last.pt", 3)],
    "best-checkpoint": [("best.pt", 3)],
    "metrics-csv": [("metrics.csv", 9)],  # a train row and a val row per evaluation
    "between-csv-and-checkpoint": [("after:metrics.csv", 10)],  # the rows of step 500 written, its last.pt not
    "config-of-a-resumed-run": [("last.pt", 2), ("config.yaml", 1)],
    "final-summary": [("summary.json", 1)],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILLS_DURING_WRITES))
def test_kill_9_during_each_write_then_resume_auto_is_exact(case, tmp_path, mnist_root, uninterrupted):
    run_dir = tmp_path / "run"
    args = _kill_args(mnist_root, run_dir)
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    for target, n in KILLS_DURING_WRITES[case]:
        job = subprocess.run([sys.executable, str(REPO / "tests" / "kill_driver.py"), target, str(n), *args,
                              "resume=auto"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]  # the write was reached and killed
    _finish_and_compare(args, run_dir, uninterrupted, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_at_random_times_then_resume_auto_is_exact(seed, tmp_path, mnist_root, uninterrupted):
    """Up to four kills at random times within an uninterrupted run's duration (start-up, training, evaluation,
    a checkpoint write or the end), each followed by resume=auto."""
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    args = _kill_args(mnist_root, run_dir)
    killed = 0
    for _ in range(4):
        job = _cli([*args, "resume=auto"], tmp_path)
        time.sleep(rng.uniform(0.5, uninterrupted[1]))
        if job.poll() is not None:
            job.communicate()
            assert job.returncode == 0
            break
        job.kill()
        job.communicate()
        killed += 1
    assert killed
    _finish_and_compare(args, run_dir, uninterrupted, tmp_path)


def test_second_run_into_a_locked_dir_refuses_naming_the_holder(compose_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_dir_lock(str(out)):  # a live run (this process) holds the dir
        with pytest.raises(ConfigError, match=rf"in use by the run of PID {os.getpid()} on host "
                                              rf"{socket.gethostname()}"):
            run(compose_cfg(output_dir=out))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    assert not (out / ".lock").exists()  # released by its holder


def test_stale_lock_is_taken_over_with_a_warning(compose_cfg, tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID whose process has exited
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    summary = run(compose_cfg(output_dir=out))
    assert summary["status"] == "completed" and not (out / ".lock").exists()
    assert f"taking over the stale lock of PID {gone.pid}" in caplog.text


def test_lock_of_another_host_is_not_taken_over(compose_cfg, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "earlier"}))
    with pytest.raises(ConfigError, match="PID 1 on host elsewhere.*delete the .lock file"):
        run(compose_cfg(output_dir=out))


def test_requeued_slurm_job_takes_over_its_own_lock(compose_cfg, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": 1, "host": "node-a", "slurm_job_id": "77", "since": "earlier"}))
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job, requeued onto another node
    assert run(compose_cfg(output_dir=out))["status"] == "completed"


def test_partial_files_of_killed_writes_are_removed_at_start(compose_cfg, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")  # writes that were killed before their rename
    (out / "metrics.csv.tmp").write_text("step,time_st")
    (out / "config.yaml.tmp").write_text("model:\n  na")
    run(compose_cfg("resume=auto", output_dir=out))
    assert not list(out.glob("*tmp*")) and "removed 3 partial file(s)" in caplog.text


@pytest.mark.parametrize("name", ["config.yaml", "best.pt"])
def test_files_not_written_by_the_harness_are_never_overwritten(compose_cfg, tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("the user's own file")
    with pytest.raises(ConfigError, match=rf"already holds files a run writes \({name}\)"):
        run(compose_cfg(output_dir=out))
    assert (out / name).read_text() == "the user's own file" and sorted(p.name for p in out.iterdir()) == [name]


def _poison_weights_at(monkeypatch, n_steps):
    """The update of step n_steps leaves NaN weights while the loss that produced it was finite."""
    original = Trainer._update

    def update(self):
        step = original(self)
        if step == n_steps:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return step

    monkeypatch.setattr(Trainer, "_update", update)


def test_nan_weights_at_evaluation_never_become_best(compose_cfg, tmp_path, monkeypatch):
    _poison_weights_at(monkeypatch, 4)  # right before the second validation
    out = tmp_path / "run"
    summary = run(compose_cfg("trainer.max_steps=8", "trainer.eval_every_n_steps=2", output_dir=out))
    assert summary["status"] == "diverged" and summary["best_step"] == 2
    assert "good checkpoints kept: last.pt (step 2), best.pt (step 2)" in summary["error"]
    for name in ("last.pt", "best.pt"):
        weights = torch.load(out / name, weights_only=False)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), name


def test_nan_before_any_checkpoint_says_none_is_good(compose_cfg, tmp_path, monkeypatch):
    _poison_weights_at(monkeypatch, 2)
    out = tmp_path / "run"
    summary = run(compose_cfg("trainer.max_steps=8", "trainer.eval_every_n_steps=2", output_dir=out))
    assert summary["status"] == "diverged" and summary["best_val"] is None
    assert "no checkpoint was written before it" in summary["error"] and not (out / "best.pt").exists()


def test_nan_validation_loss_is_not_selectable():
    trainer = Trainer.__new__(Trainer)
    trainer.data = type("D", (), {"spec": type("S", (), {"selection": None})()})()
    trainer.task = type("T", (), {"metric": "acc", "mode": "max"})()
    assert trainer.selection_key({"acc": 0.1, "loss": 2.3}) == [0.1]
    assert trainer.selection_key({"acc": 0.1, "loss": float("nan")}) is None  # argmax of NaN outputs: acc finite


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_one_bad_job_fails_alone_and_the_sweep_lists_every_job(tmp_path, mnist_root, launcher):
    sweep = tmp_path / "sweep"
    args = ["-m", "model.hidden_size=16,0,24", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}",
            "trainer.max_steps=1", "trainer.max_epochs=1", "trainer.limit_eval_batches=1", "data.pixels_per_step=28",
            "data.download=false", "trainer.device=cpu", "data.batch_size=16"]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    job = _cli(args, tmp_path)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 1, err[-3000:]  # the sweep says not every job finished
    assert "model.hidden_size: must be >= 1" in err and "1 of 3 jobs did not finish" in err
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert list(table.job) == [0, 1, 2]
    assert list(table.status) == ["completed", "rejected", "completed"]
    assert "hidden_size" in table.error[1] and table.error[[0, 2]].isna().all()
    assert sorted(p.parent.name for p in sweep.glob("*/summary.json")) == ["0", "2"]


def test_a_model_too_large_for_memory_is_named_before_any_file(compose_cfg, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"model.hidden_size=10000000: the model does not fit in cpu memory"):
        run(compose_cfg("model=rnn", "model.hidden_size=10000000", output_dir=out))
    assert not (out / "config.yaml").exists()


def test_activations_too_large_for_memory_are_named_before_any_file(compose_cfg, tmp_path):
    """SBO's low-rank weights fit at n = 10^6, so the model builds; its hidden states over a batch cannot (this
    used to fail at the first batch, after config.yaml and summary.json were written)."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"model.hidden_size=1000000 with data.batch_size=65536 over 28 steps "
                                          r"needs at least \d+ GiB .* choose a smaller"):  # about 7 TB
        run(compose_cfg("model=sbo", "model.hidden_size=1000000", "data.batch_size=65536", output_dir=out))
    assert not any((out / name).exists() for name in ("config.yaml", "summary.json", "metrics.csv"))
