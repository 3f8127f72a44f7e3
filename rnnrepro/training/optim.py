"""Optimizer and schedule construction from the config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import hydra.utils
import torch
from omegaconf import MISSING

from rnnrepro.schema import positive, register_schema, require


# ------------------------------------------------------------------------------------------------- config schema
@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        positive(self.lr, "optimizer.lr")
        require(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")


@register_schema("optimizer", "adam")
@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@register_schema("optimizer", "sgd")
@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {self.momentum}")


@register_schema("optimizer", "adagrad")
@dataclass
class AdagradConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adagrad"
    eps: float = 1e-10


@register_schema("optimizer", "rmsprop")
@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


@register_schema("optimizer", "ntasgd")
@dataclass
class NTASGDConfig(OptimizerConfig):
    """Non-monotonically triggered averaged SGD (awd-lstm-lm ``--optimizer sgd``): plain SGD until the validation
    metric is worse than the best of all but the last ``nonmono`` validations, then averaged SGD."""

    _target_: str = "rnnrepro.training.optim.NTASGD"
    nonmono: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.nonmono >= 1, "optimizer.nonmono", f"must be >= 1, got {self.nonmono}")


class SchedulerName(str, Enum):
    none = "none"
    step = "step"
    linear = "linear"
    decay_after = "decay_after"
    cosine = "cosine"
    plateau = "plateau"
    jsb = "jsb"


class ScheduleInterval(str, Enum):
    step = "step"
    epoch = "epoch"


class LinearTarget(str, Enum):
    lr = "lr"
    weight_decay = "weight_decay"


@register_schema("", "scheduler")
@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.none
    interval: ScheduleInterval = ScheduleInterval.epoch
    # step: multiply the lr by gamma every step_size intervals
    step_size: int = 50
    gamma: float = 0.5
    # linear: move `target` from start_factor to end_factor (times its initial value) over the run
    target: LinearTarget = LinearTarget.lr
    start_factor: float = 1.0
    end_factor: float = 0.0
    # decay_after: lr * gamma ** max(0, count - after + 1) at interval count (0-based): `after` intervals at the
    # initial lr, then one factor of gamma per interval (TF PTB tutorial: after = max_epoch, gamma = lr_decay)
    after: int = 4
    # cosine: lr from its initial value to end_factor times it along a half cosine over the run's intervals
    # plateau: after each validation that does not improve on the best, for more than `patience` validations in a
    #   row, lr *= gamma (pytorch/examples word LM: gamma 0.25, patience 0)
    patience: int = 0
    # jsb: after a validation when e epochs are complete, if e > after and the validation loss exceeds the max of the
    #   previous `window` validations, lr *= gamma (Stable Recurrent Models JSB code: after 10, window 3, gamma 0.1)
    window: int = 3

    def __post_init__(self) -> None:
        require(self.step_size >= 1, "scheduler.step_size", f"must be >= 1, got {self.step_size}")
        positive(self.gamma, "scheduler.gamma")
        require(self.patience >= 0, "scheduler.patience", f"must be >= 0, got {self.patience}")
        require(self.window >= 1, "scheduler.window", f"must be >= 1, got {self.window}")
        require(self.after >= 0, "scheduler.after", f"must be >= 0, got {self.after}")
        require(self.start_factor >= 0 and self.end_factor >= 0, "scheduler.start_factor/end_factor",
                 "must be >= 0")


def build_optimizer(opt_cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the model's trainable parameters, except those a module trains with its own
    (``own_optimizers()``, e.g. DTRIV's RMSprop on A): then a :class:`CompositeOptimizer` steps them all."""
    own = [pair for module in model.modules() if hasattr(module, "own_optimizers") for pair in module.own_optimizers()]
    taken = {id(p) for params, _ in own for p in params}
    main = hydra.utils.instantiate(opt_cfg, _convert_="all")(
        params=[p for p in model.parameters() if p.requires_grad and id(p) not in taken])
    if not own:
        return main
    return CompositeOptimizer([main, *(factory(params) for params, factory in own)])


class CompositeOptimizer:
    """Several optimizers stepped as one (the code's ``optim`` and ``optim_orth``). ``param_groups`` is the list of
    all their groups (the same dicts, so schedules and the variable-BPTT lr scale reach every group); the first
    optimizer's extras (``observe``, ``averaged_weights``) are passed through."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"composite": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        if "composite" not in state or len(state["composite"]) != len(self.optimizers):
            raise ValueError("the checkpoint's optimizer state is not this model's set of optimizers")
        for optimizer, part in zip(self.optimizers, state["composite"]):
            optimizer.load_state_dict(part)

    def __getattr__(self, name: str) -> Any:
        if name in ("observe", "averaged_weights"):
            return getattr(self.optimizers[0], name)
        raise AttributeError(name)


class NTASGD(torch.optim.Optimizer):
    """NT-ASGD (Merity et al. 2018; awd-lstm-lm main.py). Plain SGD (with L2 weight decay in the gradient) until
    :meth:`observe` sees a validation value worse than the best of all values but the last ``nonmono`` (checked
    before the new value joins the history, as the awd code does); from then on every step also updates ``ax``, the
    average of the iterates with torch.optim.ASGD's weights for t0 = 0, lambd = 0 (mu_k = 1 / max(1, k - 1) at the
    k-th averaged step; the step size stays lr). :meth:`averaged_weights` swaps ``ax`` in, for evaluation and for the
    checkpoint of the best model, as the awd code evaluates and saves the averaged model."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, nonmono: int = 5) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.nonmono = int(nonmono)
        self.averaging = False
        self.averaged_steps = 0
        self.switched_at_validation: int | None = None
        self.history: list[float] = []

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.averaging:
            self.averaged_steps += 1
            mu = 1.0 / max(1, self.averaged_steps - 1)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                p.add_(grad, alpha=-group["lr"])
                if self.averaging:
                    state = self.state[p]
                    if "ax" not in state or mu == 1.0:
                        state["ax"] = p.detach().clone()
                    else:
                        state["ax"].add_(p.sub(state["ax"]).mul_(mu))
        return loss

    def observe(self, value: float, mode: str) -> None:
        loss = value if mode == "min" else -value
        if (not self.averaging and len(self.history) > self.nonmono
                and loss > min(self.history[: -self.nonmono])):
            self.averaging = True
            self.switched_at_validation = len(self.history) + 1
        self.history.append(loss)

    def averaged_weights(self):
        """Context manager: the parameters hold their averages ``ax`` inside it (nothing changes before the
        switch)."""
        optimizer = self

        class _Swap:
            def __enter__(self):
                self.saved = []
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        ax = optimizer.state[p].get("ax")
                        if ax is not None:
                            self.saved.append((p, p.detach().clone()))
                            p.data.copy_(ax)

            def __exit__(self, *exc):
                for p, value in self.saved:
                    p.data.copy_(value)
                return False

        return _Swap()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["ntasgd"] = {"averaging": self.averaging, "averaged_steps": self.averaged_steps,
                           "switched_at_validation": self.switched_at_validation, "history": list(self.history)}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("ntasgd", {})
        super().load_state_dict(state_dict)
        self.averaging = extra.get("averaging", False)
        self.averaged_steps = extra.get("averaged_steps", 0)
        self.switched_at_validation = extra.get("switched_at_validation")
        self.history = list(extra.get("history", []))


class Schedule:
    """The learning-rate (or weight-decay) schedule, applied per optimizer step or per epoch (``scheduler.interval``):

    - ``step``: gamma ** (count // step_size); ``decay_after``: gamma ** max(0, count - after + 1);
    - ``linear`` moves the target hyperparameter (lr, or weight_decay for SBO-RNN's linear weight-decay schedule) from
      start_factor to end_factor times its initial value over the run's total number of intervals;
    - ``cosine``: end_factor + (1 - end_factor) (1 + cos(pi count / total)) / 2;
    - ``plateau`` and ``jsb`` react to the validation metric (:meth:`observe`, called after every validation) and
      multiply the current factor by gamma.
    """

    def __init__(self, cfg: Any, optimizer: torch.optim.Optimizer, total_steps: int, total_epochs: int) -> None:
        self.name = str(getattr(cfg.name, "value", cfg.name))
        self.interval = str(getattr(cfg.interval, "value", cfg.interval))
        self.target = str(getattr(cfg.target, "value", cfg.target))
        self.cfg, self.optimizer = cfg, optimizer
        self.total = max(1, total_steps if self.interval == "step" else total_epochs)
        self.initial = [g[self.target if self.name == "linear" else "lr"] for g in optimizer.param_groups]
        self.count = 0
        self.reactive_factor = 1.0  # plateau / jsb: the product of the reductions so far
        self.history: list[float] = []  # validation values seen by observe()
        self.best: float | None = None
        self.bad = 0
        self._apply()

    def observe(self, value: float, mode: str, epochs_done: int | None = None) -> None:
        """One validation result (``mode``: min or max is better) after ``epochs_done`` complete epochs (default: one
        per validation). plateau / jsb may reduce the lr here."""
        sign = 1.0 if mode == "min" else -1.0  # compare as a loss
        loss = sign * value
        if self.name == "plateau":
            if self.best is None or loss < self.best:
                self.best, self.bad = loss, 0
            else:
                self.bad += 1
                if self.bad > int(self.cfg.patience):
                    self.reactive_factor *= float(self.cfg.gamma)
                    self.bad = 0
        elif self.name == "jsb":
            epoch = len(self.history) + 1 if epochs_done is None else epochs_done
            previous = self.history[-int(self.cfg.window):]
            if epoch > int(self.cfg.after) and previous and loss > max(previous):
                self.reactive_factor *= float(self.cfg.gamma)
        self.history.append(loss)
        self._apply()

    def factor(self, count: int) -> float:
        if self.name == "step":
            return float(self.cfg.gamma) ** (count // int(self.cfg.step_size))
        if self.name == "decay_after":
            return float(self.cfg.gamma) ** max(0, count - int(self.cfg.after) + 1)
        if self.name == "cosine":
            end = float(self.cfg.end_factor)
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(count / self.total, 1.0)))
        if self.name in ("plateau", "jsb"):
            return self.reactive_factor
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
        return {"count": self.count, "initial": self.initial, "reactive_factor": self.reactive_factor,
                "history": self.history, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.initial = state["count"], state["initial"]
        self.reactive_factor = state.get("reactive_factor", 1.0)
        self.history, self.best, self.bad = state.get("history", []), state.get("best"), state.get("bad", 0)
        self._apply()

    def current(self) -> float | None:
        return self.optimizer.param_groups[0]["lr"]
