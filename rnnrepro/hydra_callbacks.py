"""Hydra multirun support: each job fails alone (its failure recorded in its job dir), and after the sweep every
job, finished or not, is listed in <sweep dir>/sweep_summary.csv."""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("rnnrepro")

# Written by a multirun job that ended without a finished run record (bad input, a crash before training): the
# sweep lists it, and the job dir's summary.json (if an earlier run left one) is kept untouched.
JOB_FAILURE = "job_failure.json"
FAILED_STATUSES = ("failed", "rejected", "interrupted")
COLUMNS = ["job", "experiment", "model", "dataset", "seed", "status", "metric", "best_val", "test_at_best_val",
           "test_last", "steps", "wall_time_s", "error", "output_dir"]


def record_job_failure(job_dir: str, cfg: DictConfig, status: str, error: BaseException) -> str:
    from rnnrepro.results.summary import write_json_atomic

    record = {"status": status, "error": f"{type(error).__name__}: {error}",
              "experiment": cfg.meta.get("experiment"), "model": cfg.model.get("name"),
              "dataset": cfg.data.get("name"), "seed": cfg.get("seed"), "output_dir": cfg.get("output_dir") or job_dir,
              "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path = os.path.join(job_dir, JOB_FAILURE)
    write_json_atomic(record, path)
    return path


def _job_key(job: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in job.split(os.sep))


def collect_jobs(sweep_dir: str) -> list[dict]:
    """One row per job dir: its failure record when that is newer than its summary.json (this sweep's attempt
    failed), else the summary."""
    import json

    from rnnrepro.results.summary import read_summary

    dirs = {os.path.dirname(p) for name in ("summary.json", JOB_FAILURE)
            for p in glob.glob(os.path.join(sweep_dir, "**", name), recursive=True)}
    rows = []
    for folder in dirs:
        summary, failure = os.path.join(folder, "summary.json"), os.path.join(folder, JOB_FAILURE)
        if os.path.exists(failure) and (not os.path.exists(summary)
                                        or os.path.getmtime(failure) >= os.path.getmtime(summary)):
            with open(failure) as f:
                row = json.load(f)
        else:
            row = read_summary(summary)
        row["job"] = os.path.relpath(folder, sweep_dir)
        rows.append(row)
    return sorted(rows, key=lambda r: _job_key(r["job"]))


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import pandas as pd

        sweep_dir = config.hydra.sweep.dir
        rows = collect_jobs(sweep_dir)
        if not rows:
            return
        frame = pd.DataFrame(rows).reindex(columns=COLUMNS)
        path = os.path.join(sweep_dir, "sweep_summary.csv")
        frame.to_csv(path, index=False)
        log.info("sweep summary (%d jobs): %s", len(frame), path)
        failed = frame[frame.status.isin(FAILED_STATUSES)]
        if len(failed):
            for _, row in failed.iterrows():
                log.error("job %s %s: %s", row.job, row.status, row.error)
            # the sweep's exit status says that not every job finished; each job's own message is above
            raise SystemExit(f"error: {len(failed)} of {len(frame)} jobs did not finish (see {path})")
