"""Optimizer and schedule construction from the config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hydra.utils
import torch


def build_optimizer(opt_cfg: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return hydra.utils.instantiate(opt_cfg, _convert_="all")(params=list(params))


class Schedule:
    """none | step | linear | decay_after, applied per optimizer step or per epoch (``scheduler.interval``).

    ``linear`` moves the target hyperparameter (lr, or weight_decay for SBO-RNN's linear weight-decay schedule) from
    start_factor to end_factor times its initial value over the run's total number of intervals.
    """

    def __init__(self, cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int, total_epochs: int) -> None:
        self.name = str(getattr(cfg.name, "value", cfg.name))
        self.interval = str(getattr(cfg.interval, "value", cfg.interval))
        self.target = str(getattr(cfg.target, "value", cfg.target))
        self.cfg, self.optimizer = cfg, optimizer
        self.total = max(1, total_steps if self.interval == "step" else total_epochs)
        self.initial = [g[self.target if self.name == "linear" else "lr"] for g in optimizer.param_groups]
        self.count = 0
        self._apply()

    def factor(self, count: int) -> float:
        if self.name == "step":
            return float(self.cfg.gamma) ** (count // int(self.cfg.step_size))
        if self.name == "decay_after":
            return float(self.cfg.gamma) ** max(0, count - int(self.cfg.after) + 1)
        if self.name == "linear":
            frac = min(count / self.total, 1.0)
            return float(self.cfg.start_factor) + frac * (float(self.cfg.end_factor) - float(self.cfg.start_factor))
        return 1.0

    def _apply(self) -> None:
        key = self.target if self.name == "linear" else "lr"
        for group, base in zip(self.optimizer.param_groups, self.initial):
            group[key] = base * self.factor(self.count)

    def step(self, interval: str) -> None:
        if interval == self.interval and self.name != "none":
            self.count += 1
            self._apply()

    def state_dict(self) -> dict:
        return {"count": self.count, "initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.initial = state["count"], state["initial"]
        self._apply()

    def current(self) -> float | None:
        return self.optimizer.param_groups[0]["lr"]
