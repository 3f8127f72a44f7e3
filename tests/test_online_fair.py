"""scripts/online_rtrl_fair.py: the commands each stage runs, that they compose into valid configs, and the
learning-rate selection of the sweep (on run folders written here in the real summary.json / metrics.csv layout)."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from helpers import load_script
from rnnrepro.config import validate


@pytest.fixture(scope="module")
def fair():
    return load_script("online_rtrl_fair")


def _overrides(cmd: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in cmd[2:])


def test_budgets_in_time_steps_updates_and_wall_clock(fair, tmp_path):
    tb = _overrides(fair.command("tbptt", 50, -3.0, 0, str(tmp_path / "a"), "time_steps", time_steps=100_000))
    assert tb["trainer.max_steps"] == "2000" and tb["trainer.eval_every_n_steps"] == "100"  # 5k time steps
    assert tb["algorithm.tbptt.truncation"] == "50" and tb["data.chunk_len"] == "50"
    assert float(tb["optimizer.lr"]) == pytest.approx(1e-3) and tb["experiment"] == "online_rtrl/copy_tbptt"
    ok = _overrides(fair.command("ok", None, -3.5, 1, str(tmp_path / "b"), "time_steps", time_steps=100_000))
    assert ok["trainer.max_steps"] == "100000" and ok["trainer.eval_every_n_steps"] == "5000"
    assert "algorithm.tbptt.truncation" not in ok and ok["model.hidden_size"] == "32" and ok["seed"] == "1"
    up = _overrides(fair.command("tbptt", 25, -3.0, 0, str(tmp_path / "c"), "updates", updates=100_000,
                                 eval_every=25 * 5_000))
    assert up["trainer.max_steps"] == "100000" and up["trainer.eval_every_n_steps"] == "5000"
    wall = _overrides(fair.command("tbptt", 5, -3.0, 0, str(tmp_path / "d"), "wall_clock", cpu_seconds=321.04))
    assert wall["trainer.max_cpu_time_s"] == "321.0" and int(wall["trainer.max_steps"]) >= 10**8
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "last.pt").write_bytes(b"")
    assert "resume=auto" in fair.command("tbptt", 5, -3.0, 0, str(tmp_path / "d"), "wall_clock", cpu_seconds=1.0)


def test_every_sweep_command_composes_and_validates(fair, compose_cfg, tmp_path):
    jobs = fair.stage_jobs("sweep", str(tmp_path))
    assert len(jobs) == 3 * len(fair.LR_EXPONENTS) + 4 * len(fair.TBPTT_LR_EXPONENTS)
    assert len({out for _, out in jobs}) == len(jobs)
    seen = set()
    for cmd, _ in jobs:
        o = _overrides(cmd)
        key = (o["experiment"], o.get("algorithm.tbptt.truncation"))
        if key in seen:
            continue
        seen.add(key)
        cfg = compose_cfg(*[f"{k}={v}" for k, v in o.items() if k != "output_dir"], tiny=False)
        validate(cfg)
        assert cfg.model.hidden_size == 32 and cfg.data.batch_size == 16 and cfg.trainer.num_threads == 1
    assert len(seen) == 7


def _fake_run(folder, T_by_step: list[tuple[int, int, float]], status: str = "completed") -> None:
    """A finished run's files: train rows (time_steps, curriculum_T, loss)."""
    os.makedirs(folder)
    rows = [{"step": t, "time_steps": t, "epoch": 0, "split": "train", "loss": loss, "curriculum_T": T,
             "lr": 1e-3, "wall_time_s": t / 100} for t, T, loss in T_by_step]
    pd.DataFrame(rows).to_csv(os.path.join(folder, "metrics.csv"), index=False)
    json.dump({"status": status, "git_sha": "abc", "git_dirty": False, "wall_time_s": 1.0, "steps": 1,
               "time_steps": 1}, open(os.path.join(folder, "summary.json"), "w"))


def test_sweep_keeps_the_largest_T_then_the_earliest_then_the_lowest_loss(fair, tmp_path):
    runs = str(tmp_path)
    assert fair.LR_EXPONENTS == (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5)
    outcomes = {-4.0: [(5000, 2, 0.5), (10000, 3, 0.4)],  # T 3
                -3.5: [(5000, 4, 0.5), (10000, 4, 0.3)],  # T 4 from 5k
                -3.0: [(5000, 3, 0.5), (10000, 4, 0.1)],  # T 4 from 10k: later, despite the lower loss
                -2.5: [(5000, 1, 0.9), (10000, 1, 0.9)], -2.0: [(5000, 1, 1.0)], -1.5: [(5000, 1, 1.1)]}
    for e, rows in outcomes.items():
        _fake_run(fair.run_folder(runs, "sweep", fair.variant_name("uoro", None, e), fair.SWEEP_SEED), rows)
    chosen = fair.sweep_choice(runs)
    assert set(chosen) == {("uoro", None)} and chosen[("uoro", None)]["lr_exp"] == -3.5
    tie = {-4.0: [(5000, 4, 0.2)], -3.5: [(5000, 4, 0.3)], -3.0: [(5000, 2, 0.1)], -2.5: [(5000, 4, 0.25)],
           -2.0: [(5000, 3, 0.2)], -1.5: [(5000, 1, 2.0)]}
    assert fair.TBPTT_LR_EXPONENTS == (*fair.LR_EXPONENTS, -1.0)
    for e, rows in tie.items():
        _fake_run(fair.run_folder(runs, "sweep", fair.variant_name("tbptt", 25, e), fair.SWEEP_SEED), rows)
    assert ("tbptt", 25) not in fair.sweep_choice(runs)  # its grid also has 10^-1
    _fake_run(fair.run_folder(runs, "sweep", fair.variant_name("tbptt", 25, -1.0), fair.SWEEP_SEED), [(5000, 1, 3.0)])
    assert fair.sweep_choice(runs)[("tbptt", 25)]["lr_exp"] == -4.0
    with pytest.raises(SystemExit, match="not finished for OK, KF-RTRL, TBPTT-5, TBPTT-50, TBPTT-100"):
        fair.stage_jobs("time_steps", runs)


def test_a_stage_can_run_a_subset_of_the_table_seeds(fair, tmp_path):
    runs = str(tmp_path)
    for a, k in fair.methods():
        _fake_run(fair.run_folder(runs, "sweep", fair.variant_name(a, k, -3.0), fair.SWEEP_SEED), [(5000, 2, 0.5)])
        for e in fair.lr_grid(a):
            if e != -3.0:
                _fake_run(fair.run_folder(runs, "sweep", fair.variant_name(a, k, e), fair.SWEEP_SEED), [(5000, 1, 1)])
    every = fair.stage_jobs("updates", runs)
    only0 = fair.stage_jobs("updates", runs, (0,))
    assert len(every) == 4 * len(fair.TABLE_SEEDS) and len(only0) == 4
    assert all(out.endswith("seed0") for _, out in only0) and {o for _, o in only0} < {o for _, o in every}
    with pytest.raises(SystemExit, match="among the table seeds"):
        fair.stage_jobs("updates", runs, (100,))
