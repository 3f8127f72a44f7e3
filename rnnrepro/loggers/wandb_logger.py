"""Optional Weights & Biases mirror. Every call is guarded: a W&B failure logs a warning and turns the mirror off,
and never touches the local metrics.csv / summary.json."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class WandbMirror:
    def __init__(self, cfg: Any, run_config: dict, output_dir: str, run_id: str | None = None) -> None:
        self.run = None
        self.enabled = str(getattr(cfg.name, "value", cfg.name)) == "wandb"
        if not self.enabled:
            return
        # an explicit logger.mode wins; else W&B reads $WANDB_MODE itself
        mode = None if cfg.mode is None else str(getattr(cfg.mode, "value", cfg.mode))
        meta = run_config.get("meta", {})
        tags = list(cfg.tags) + [str(meta[k]) for k in ("paper", "table", "row") if meta.get(k)]
        try:
            import wandb

            self.run = wandb.init(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=tags, mode=mode,
                                  config=run_config, dir=output_dir, id=run_id, resume="allow" if run_id else None,
                                  job_type="train", reinit="finish_previous",
                                  settings=wandb.Settings(init_timeout=float(cfg.init_timeout_s)))
        except Exception as err:  # noqa: BLE001 - any W&B problem must leave the run going
            self._disable(err)

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def _disable(self, err: Exception) -> None:
        log.warning("W&B mirror disabled (local CSV/JSON unaffected): %s", err)
        self.run = None

    def log(self, row: dict) -> None:
        if self.run is None:
            return
        try:
            split = row["split"]
            data = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split") and v is not None}
            self.run.log(data, step=int(row["step"]))
        except Exception as err:  # noqa: BLE001
            self._disable(err)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.run.finish()
        except Exception as err:  # noqa: BLE001
            self._disable(err)
