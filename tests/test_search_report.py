"""scripts/search_report.py ranks a Hydra multirun by validation only and never shows test numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from helpers import REPO


def _job(root, num: int, lr: str, best_val: float, test: float) -> None:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["experiment=antisymmetric_rnn/table1_pmnist_antisym", "trainer.max_steps=100", f"optimizer.lr={lr}",
         "data.root=/somewhere"]))
    (job / "summary.json").write_text(json.dumps({
        "best_val": best_val, "best_step": 50, "steps": 100, "status": "completed", "metric": "acc", "mode": "max",
        "wall_time_s": 120.0, "git_sha": "0123456789abcdef", "git_dirty": False, "device_name": "cpu",
        "finished_at": f"2026-12-02T0{num}:00:00", "test_at_best_val": test, "test_last": test}))


def test_ranks_by_validation_and_hides_test(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, "0.1", 0.81, 0.111111)
    _job(sweep, 1, "1.0", 0.93, 0.222222)
    _job(sweep, 2, "0.01", 0.42, 0.999999)  # the best test: must not be what is selected, nor shown
    out = tmp_path / "report" / "search"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "search_report.py"), str(sweep), "--out", str(out),
                           "--title", "pMNIST search"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = (out.parent / "search.md").read_text()
    assert "Selected: `optimizer.lr=1.0` (best val 0.93)" in text
    assert "0.1111" not in text and "0.2222" not in text and "0.9999" not in text
    assert "`trainer.max_steps=100`" in text and "/somewhere" not in text
    rows = (out.parent / "search.csv").read_text().splitlines()
    assert rows[1].startswith("1.0,") and rows[3].startswith("0.01,")


def test_empty_sweep_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "search_report.py"), str(tmp_path), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "run the search" in done.stderr
