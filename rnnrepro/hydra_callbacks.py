"""Hydra callbacks: after a multirun, collect every job's summary.json into <sweep dir>/sweep_summary.csv."""

from __future__ import annotations

import glob
import logging
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("rnnrepro")


def collect_summaries(root: str) -> list[dict]:
    from rnnrepro.results.summary import read_summary

    return [read_summary(p) for p in sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True))]


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import pandas as pd

        sweep_dir = config.hydra.sweep.dir
        rows = collect_summaries(sweep_dir)
        if not rows:
            return
        columns = ["experiment", "model", "dataset", "seed", "status", "metric", "best_val", "test_at_best_val",
                   "test_last", "steps", "wall_time_s", "output_dir"]
        frame = pd.DataFrame(rows)[[c for c in columns if c in rows[0]]]
        path = os.path.join(sweep_dir, "sweep_summary.csv")
        frame.to_csv(path, index=False)
        log.info("sweep summary (%d jobs): %s", len(frame), path)
