"""metrics.csv: one row per evaluation and split (step, time steps, epoch, split, metric columns, lr, wall time)."""

from __future__ import annotations

import os

import pandas as pd

LEADING = ["step", "time_steps", "epoch", "split"]
TRAILING = ["lr", "wall_time_s"]


class CSVLogger:
    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: list[dict] = []

    def truncate_after(self, step: int) -> None:
        """On resume: keep the rows up to the checkpoint's step, dropping what a crashed run wrote after it, and the
        end-of-run test rows (the resumed run evaluates the test split again when it ends)."""
        if os.path.exists(self.path):
            frame = pd.read_csv(self.path)
            self.rows = [r for r in frame.to_dict("records")
                         if r["step"] <= step and not str(r["split"]).startswith("test")]
            self._write()

    def log(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        metric_cols: list[str] = []
        for row in self.rows:
            metric_cols += [k for k in row if k not in LEADING + TRAILING and k not in metric_cols]
        frame = pd.DataFrame(self.rows, columns=LEADING + metric_cols + TRAILING)
        tmp = self.path + ".tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.path)

    def last(self, split: str) -> dict | None:
        rows = [r for r in self.rows if r["split"] == split]
        return rows[-1] if rows else None
