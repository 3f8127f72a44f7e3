"""summary.json: the one record per run that tables and sweeps are built from."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from functools import lru_cache

import torch

# Keys every summary.json has (tests/test_run.py checks the schema).
SUMMARY_FIELDS = [
    "experiment", "paper", "table", "row", "tier", "model", "dataset", "seed", "params", "params_free", "metric",
    "mode", "best_val", "best_step", "test_at_best_val", "test_last", "val_last", "steps", "time_steps", "epochs",
    "wall_time_s", "cpu_time_s", "selection",
    "status", "error", "device", "device_name", "torch_version", "git_sha", "git_dirty", "host", "started_at",
    "finished_at", "data", "limit_eval_batches", "deterministic", "output_dir", "segments",
]

STATUSES = ("completed", "diverged", "failed", "interrupted", "running")


@lru_cache(maxsize=1)
def git_info() -> tuple[str, bool]:
    """(SHA, dirty) of the repository holding this package; ("unknown", False) outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), e.g. "AMD EPYC 7B13"; the platform string elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def _finite_or_none(node, where: str, found: list[str]):
    """A copy with each NaN/Inf float replaced by None, its dotted path appended to ``found``."""
    if isinstance(node, float) and not math.isfinite(node):
        found.append(where)
        return None
    if isinstance(node, dict):
        return {k: _finite_or_none(v, f"{where}.{k}" if where else str(k), found) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite_or_none(v, f"{where}[{i}]", found) for i, v in enumerate(node)]
    return node


def write_json_atomic(obj: dict, path: str) -> None:
    """Strict JSON (no bare NaN, which parsers reject): a non-finite number is written as null and its field named in
    ``nonfinite_fields``."""
    found: list[str] = []
    clean = _finite_or_none(obj, "", found)
    if found:
        clean["nonfinite_fields"] = found
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(clean, f, indent=2, sort_keys=False, default=str, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def read_summary(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
