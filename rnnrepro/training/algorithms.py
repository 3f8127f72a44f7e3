"""Gradient computation as its own axis (``algorithm=``).

An algorithm turns one batch into parameter gradients and decides when the weights move: it receives an ``update``
callback (clip, optimizer step, constraint hooks, per-step schedule) and may call it once per batch (BPTT), once per
window (truncated BPTT) or once per time step (online algorithms such as RTRL). The trainer stays the same for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from rnnrepro.models import SequenceModel


class Diverged(RuntimeError):
    """The training loss became NaN or Inf."""


def check_finite(loss: torch.Tensor) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise Diverged(f"training loss is {value}")
    return value


class GradientAlgorithm:
    def __init__(self, cfg: Any, model: SequenceModel, carry_state: bool = False) -> None:
        self.cfg, self.model, self.carry_state = cfg, model, carry_state
        self.state: tuple | None = None

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        """Trains on one batch; returns its mean loss. ``update()`` applies the accumulated gradients and returns
        the number of optimizer steps taken so far."""
        raise NotImplementedError

    def reset(self) -> None:
        self.state = None


class BPTT(GradientAlgorithm):
    """Backpropagation through the whole sequence, one update per batch. With ``carry_state`` (language models
    read as one long stream) the final state seeds the next batch, detached from its graph."""

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        out, state = self.model(batch["x"], self.state)
        if self.carry_state:
            self.state = tuple(s.detach() for s in state)
        loss = self.model.task.loss(out, batch)
        value = check_finite(loss)
        loss.backward()
        update()
        return value


ALGORITHMS = {"bptt": BPTT}


def build_algorithm(cfg: Any, model: SequenceModel, carry_state: bool) -> GradientAlgorithm:
    name = str(getattr(cfg.name, "value", cfg.name))
    return ALGORITHMS[name](cfg, model, carry_state)
