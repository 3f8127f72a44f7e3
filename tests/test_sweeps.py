"""Multirun through the real CLI: basic and joblib launchers, unique output dirs, sweep summary; launcher configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers import CONF_DIR, REPO

FAST = ["trainer.max_steps=1", "trainer.max_epochs=1", "trainer.limit_eval_batches=1", "model.hidden_size=4",
        "data.pixels_per_step=28", "data.download=false", "trainer.device=cpu", "data.batch_size=16"]


def _cli(args, cwd):
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_multirun_writes_one_summary_per_job(tmp_path, mnist_root, launcher):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=rnn,lstm", f"data.root={mnist_root}", f"hydra.sweep.dir={sweep}", *FAST]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = _cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 2
    models = {json.loads(p.read_text())["model"] for p in summaries}
    assert models == {"rnn", "lstm"}
    assert len({p.parent for p in summaries}) == 2  # unique dirs for jobs that start together
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert set(table.model) == {"rnn", "lstm"} and (table.status == "completed").all()


def test_single_run_cli_and_bad_input_message(tmp_path, mnist_root):
    ok = _cli([f"data.root={mnist_root}", f"hydra.run.dir={tmp_path / 'run'}", *FAST], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    bad = _cli([f"data.root={tmp_path / 'none'}", f"hydra.run.dir={tmp_path / 'bad'}", *FAST], tmp_path)
    assert bad.returncode == 2
    assert "error: MNIST files are missing" in bad.stderr and "Traceback" not in bad.stderr
    worse = _cli(["optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'worse'}"], tmp_path)
    assert worse.returncode == 2 and "optimizer.lr: must be > 0" in worse.stderr


def _compose_with_hydra(overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            return compose("config", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    # defaults that a 2-CPU node without a GPU can schedule; every resource overridable
    assert launcher.partition == "gpu" and launcher.gpus_per_node is None and launcher.max_num_timeout == 3
    assert launcher.cpus_per_task == 1 and launcher.mem_gb is None and launcher.signal_delay_s == 120
    gpu = _compose_with_hydra(["hydra/launcher=slurm_gpu", "hydra.launcher.mem_gb=16"]).hydra.launcher
    assert gpu._target_.endswith("SlurmLauncher") and gpu.gpus_per_node == 1 and gpu.cpus_per_task == 4
    assert gpu.mem_gb == 16 and gpu.max_num_timeout == 3


def test_optuna_search_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_with_hydra(["hparams_search=sbo_optuna"])
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and "model.eta" in cfg.hydra.sweeper.params


def test_run_dirs_carry_microseconds():
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.to_container(_compose_with_hydra([]).hydra, resolve=False)
    assert "%f" in hydra_cfg["run"]["dir"] and "%f" in hydra_cfg["sweep"]["dir"]
    assert hydra_cfg["sweep"]["subdir"] == "${hydra.job.num}"


@pytest.mark.slow
def test_optuna_sweep_runs(tmp_path, mnist_root):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    result = _cli(["hparams_search=sbo_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}",
                   f"data.root={mnist_root}", *FAST], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep.glob("*/summary.json"))) == 2
    assert (sweep / "optimization_results.yaml").exists()
