"""Gradient computation as its own axis (``algorithm=``).

An algorithm turns one batch into parameter gradients and decides when the weights move: it receives an ``update``
callback (clip, optimizer step, constraint hooks, per-step schedule) and may call it once per batch (BPTT), once per
window (truncated BPTT) or once per time step (online algorithms: exact RTRL, UORO, KF-RTRL, OK). The trainer stays
the same for all.

Every algorithm records ``step_losses``, the batch-mean loss of each time step of the last batch (for data modules
that observe training losses, such as the string-memorisation curriculum), and honours a batch's optional ``reset``
(B, T) mask: the state of a stream is zeroed before the steps where it is True.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from rnnrepro.models import SequenceModel
from rnnrepro.online.influence import ExactKronecker, KroneckerEstimator, build_estimator
from rnnrepro.schema import ConfigError, positive, register_schema, require


# ------------------------------------------------------------------------------------------------- config schema
class AlgorithmName(str, Enum):
    bptt = "bptt"
    tbptt = "tbptt"
    rtrl = "rtrl"
    uoro = "uoro"
    kf_rtrl = "kf_rtrl"
    ok = "ok"


class OKSplit(str, Enum):
    symmetric = "symmetric"  # a^(-1/2) s_j w_k[j] on both sides: the minimum variance S^2/(m-1) - sum d^2
    official = "official"  # the OK code's split (u-side / sqrt(d_j), A-side * sqrt(d_j)): unbiased, more variance


class OKOrthonormalise(str, Enum):
    gram = "gram"  # Gram matrices + float64 eigh of the small Grams: near the FLOP floor
    qr = "qr"  # Householder QR of the stacked families (OKQR, the earlier step): about 2x slower at n = 128


class OKLogNoise(str, Enum):
    formula = "formula"  # the symmetric split's step variance (what the OK code logs as its noise)
    measured = "measured"  # this step's reduction error for the split in use
    both = "both"


class RTRLJacobians(str, Enum):
    auto = "auto"  # the Kronecker form (h_hat, D, H) when the cell has one, else autograd
    kronecker = "kronecker"
    autograd = "autograd"  # per-sample Jacobians of any cell via torch.func; O(n^4) time, small n only


@dataclass
class TBPTTConfig:
    truncation: int = 25  # k: backpropagate through windows of k steps, one update per window

    def __post_init__(self) -> None:
        require(self.truncation >= 1, "algorithm.tbptt.truncation", f"must be >= 1, got {self.truncation}")


@dataclass
class OKConfig:
    rank: int = 16  # r Kronecker terms (OK paper: 16 on the copy task, 8 on CHAR-PTB)
    split: OKSplit = OKSplit.symmetric
    rebalance: bool = True  # u_k <- g u_k, A_k <- A_k / g with g = sqrt(|A_k| / |u_k|) (the OK code, for stability)
    # How the r+1 terms are orthonormalised; both are unbiased to float32 rounding (tests/test_online.py)
    orthonormalise: OKOrthonormalise = OKOrthonormalise.gram
    log_noise: OKLogNoise = OKLogNoise.both  # train-row diagnostics ok_variance_formula / ok_variance_measured

    def __post_init__(self) -> None:
        require(self.rank >= 1, "algorithm.ok.rank", f"must be >= 1, got {self.rank}")


class UOROEpsPlacement(str, Enum):
    outside = "outside"  # rho = sqrt(num / den) + eps: spec U2-U3 (the vanilla-rtrl JAX code)
    inside = "inside"  # rho = sqrt((num + eps) / (den + eps)): the harness's earlier form


@dataclass
class UOROConfig:
    eps: float = 1e-7  # spec U3 (the JAX code's value)
    eps_placement: UOROEpsPlacement = UOROEpsPlacement.outside

    def __post_init__(self) -> None:
        positive(self.eps, "algorithm.uoro.eps")


@register_schema("", "algorithm")
@dataclass
class AlgorithmConfig:
    name: AlgorithmName = AlgorithmName.bptt
    # Online algorithms (rtrl, uoro, kf_rtrl, ok): apply the accumulated gradient every N time steps (1 = fully
    # online, as the OK paper). Each step's loss is scaled by 1/N, so an update applies the mean over its N steps.
    update_every: int = 1
    # Clip the recurrent cell's gradient alone to this L2 norm (the OK code clips W, 1.0 copy / 100 PTB, and leaves
    # the readout unclipped); trainer.grad_clip clips all parameters together. Works with every algorithm.
    clip_cell: float | None = None
    tbptt: TBPTTConfig = field(default_factory=TBPTTConfig)
    ok: OKConfig = field(default_factory=OKConfig)
    uoro: UOROConfig = field(default_factory=UOROConfig)
    rtrl_jacobians: RTRLJacobians = RTRLJacobians.auto
    # Every N time steps (0 = off), log grad_noise_rel = |g~ - g| / |g| of this step's gradient q_t G~_t against exact
    # RTRL's q_t G_t on the same trajectory (an exact influence carried beside the estimator: O(n^4), small n only)
    grad_noise_every: int = 0

    def __post_init__(self) -> None:
        require(self.update_every >= 1, "algorithm.update_every", f"must be >= 1, got {self.update_every}")
        require(self.grad_noise_every >= 0, "algorithm.grad_noise_every",
                f"must be >= 0 (0 = off), got {self.grad_noise_every}")
        require(self.clip_cell is None or self.clip_cell > 0, "algorithm.clip_cell",
                 f"must be > 0 or null, got {self.clip_cell}")


class Diverged(RuntimeError):
    """The training loss became NaN or Inf."""


def check_finite(loss: torch.Tensor) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise Diverged(f"training loss is {value}")
    return value


def _name(cfg: Any) -> str:
    return str(getattr(cfg.name, "value", cfg.name))


def slice_time(batch: dict, window: slice, length: int) -> dict:
    """The sub-batch of time steps ``window`` (batch-first tensors whose second dimension is time)."""
    return {k: v[:, window] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[1] == length else v
            for k, v in batch.items()}


class GradientAlgorithm:
    def __init__(self, cfg: Any, model: SequenceModel, carry_state: bool = False) -> None:
        self.cfg, self.model, self.carry_state = cfg, model, carry_state
        self.state: Any = None
        self.step_losses: Tensor | None = None
        self.want_step_losses = False  # set by the trainer when the data module observes training losses
        self.should_stop: Callable[[], bool] = lambda: False  # set by the trainer: the step budget is spent
        self.diagnostics: dict[str, float | Tensor] = {}  # per-batch means (OK's); may be 0-dim device tensors

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        """Trains on one batch; returns its mean loss. ``update()`` applies the accumulated gradients and returns
        the number of optimizer steps taken so far."""
        raise NotImplementedError

    def reset(self) -> None:
        self.state = None

    def apply_update(self, update: Callable[[], int]) -> int:
        clip = self.cfg.clip_cell
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.cell.parameters(), float(clip))
        return update()

    def _record_step_losses(self, out: Tensor, batch: dict) -> None:
        if self.want_step_losses:
            with torch.no_grad():
                self.step_losses = self.model.task.step_losses(out.detach(), batch)


class BPTT(GradientAlgorithm):
    """Backpropagation through the whole sequence, one update per batch. With ``carry_state`` (language models
    read as one long stream) the final state seeds the next batch, detached from its graph."""

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        out, state = self.model(batch["x"], self.state, reset=batch.get("reset"))
        if self.carry_state:
            self.state = tuple(s.detach() for s in state)
        loss = self.model.task.loss(out, batch)
        value = check_finite(loss)
        (loss + self.model.take_penalty()).backward()
        self._record_step_losses(out, batch)
        self.apply_update(update)
        return value


class TBPTT(GradientAlgorithm):
    """Truncated BPTT(k): windows of k steps, one update per window; the state is carried across windows (detached)
    and, with ``carry_state``, across batches. Sequence-level tasks (one target at the end) train on the last
    window only, the earlier windows just advance the state."""

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        k = int(self.cfg.tbptt.truncation)
        length = batch["x"].shape[1]
        task = self.model.task
        state = self.state if self.carry_state else None
        values, step_losses = [], []
        starts = list(range(0, length, k))
        for start in starts:
            window = slice_time(batch, slice(start, start + k), length)
            last = start == starts[-1]
            if not task.sequence_output and not last:
                with torch.no_grad():
                    state = self.model(window["x"], state, reset=window.get("reset"))[1]
                continue
            loss_batch = window if task.sequence_output else {**batch, "x": window["x"]}
            out, state = self.model(window["x"], state, reset=window.get("reset"))
            loss = task.loss(out, loss_batch)
            values.append(check_finite(loss))
            (loss + self.model.take_penalty()).backward()
            if self.want_step_losses:
                step_losses.append(task.step_losses(out.detach(), window))
            state = tuple(s.detach() for s in state)
            self.apply_update(update)
            if self.should_stop():
                break
        self.state = state if self.carry_state else None
        self.step_losses = torch.cat(step_losses) if step_losses else None
        return sum(values) / max(len(values), 1)


class Online(GradientAlgorithm):
    """Online training from a forward-carried influence estimate (exact RTRL, UORO, KF-RTRL, OK).

    Per time step (the OK code's order): advance h_t and the influence with the current weights; L_t from the head;
    q_t = dL_t/dh_t by autograd through the head (whose parameters get their ordinary immediate gradient);
    add q_t G_t to the cell's gradient; every ``update_every`` steps apply the update. The cell's input encoder must
    be parameter-free (its weights would need an influence of their own): token data uses
    ``data.input_encoding=one_hot``, which the Kronecker cells fold into the input rows of W.
    """

    def __init__(self, cfg: Any, model: SequenceModel, carry_state: bool = False) -> None:
        super().__init__(cfg, model, carry_state)
        if any(p.requires_grad for p in model.encoder.parameters()):
            raise ConfigError(f"algorithm={_name(cfg)}: the input encoder has trainable parameters (an embedding) "
                              "that online algorithms do not track; set data.input_encoding=one_hot")
        try:
            self.estimator = build_estimator(cfg, model.cell)
        except TypeError as err:
            raise ConfigError(f"algorithm={_name(cfg)}: {err}") from None
        self.noise_every = int(getattr(cfg, "grad_noise_every", 0) or 0)
        self.reference = None  # exact RTRL beside the estimator, for algorithm.grad_noise_every
        if self.noise_every:
            if not isinstance(self.estimator, KroneckerEstimator):
                raise ConfigError("algorithm.grad_noise_every needs a cell with a Kronecker form (model=rhn or "
                                  "model=rnn) and algorithm=uoro|kf_rtrl|ok|rtrl")
            self.reference = ExactKronecker(model.cell)
        self.noise_clock = 0  # time steps seen, for the grad-noise probe
        self.update_every = int(cfg.update_every)
        self.pending = 0  # steps accumulated since the last update, across batches

    def reset(self) -> None:
        self.state = None

    def _step_loss(self, out: Tensor, batch: dict, t: int, length: int, scored: list[bool] | None) -> Tensor | None:
        task = self.model.task
        if not task.sequence_output:
            return task.loss(out, batch) if t == length - 1 else None
        step = {"y": batch["y"][:, t : t + 1]}
        mask = batch.get("mask")
        if mask is not None:
            if scored is not None and not scored[t]:
                return None
            step["mask"] = mask[:, t : t + 1]
        return task.loss(out.unsqueeze(1), step)

    def train_batch(self, batch: dict, update: Callable[[], int]) -> float:
        model, cell, estimator = self.model, self.model.cell, self.estimator
        with torch.no_grad():
            x = model.encoder(batch["x"]).transpose(0, 1)  # (T, B, m)
        length, rows = x.shape[:2]
        reference = self.reference
        if self.state is None or not self.carry_state or self.state[0][0].shape[0] != rows:
            self.state = (cell.init_state(rows, x), estimator.init(rows, x),
                          reference.init(rows, x) if reference is not None else None)
        state, influence, exact = (*self.state, None)[:3]  # checkpoints before the grad-noise probe hold two
        reset = batch.get("reset")
        # which steps reset rows or score a loss: read from the device once per batch, not once per step
        resets = reset.any(0).tolist() if reset is not None else None
        mask = batch.get("mask")
        scored = mask.reshape(mask.shape[0], mask.shape[1], -1).any(2).any(0).tolist() if mask is not None else None
        head_params = [p for p in model.head.parameters() if p.requires_grad]
        losses: list[Tensor] = []
        noise: list[Tensor] = []
        sums: dict[str, Tensor] = {}
        steps = 0
        for t in range(length):
            steps += 1
            if resets is not None and resets[t]:
                rows_reset = reset[:, t]
                state = tuple(s.masked_fill(rows_reset[:, None], 0) for s in state)
                influence = estimator.zero_rows(influence, rows_reset)
                if exact is not None:
                    exact = reference.zero_rows(exact, rows_reset)
            with torch.no_grad():
                if exact is None:
                    state, influence, diag = estimator.step(influence, x[t], state)
                else:  # one Kronecker step shared by the estimator and the exact reference
                    ks = cell.kron_step(x[t], state[0])
                    influence = estimator.propagate(influence, ks.h_hat, ks.D, ks.H)
                    exact = reference.propagate(exact, ks.h_hat, ks.D, ks.H)
                    state, diag = (ks.h,), dict(estimator.diagnostics)
            for key, value in diag.items():
                sums[key] = sums[key] + value if key in sums else value
            leaf = torch.cat(state, -1).requires_grad_()
            out = model.head(cell.output(tuple(leaf.split(cell.hidden_size, -1))))
            loss = self._step_loss(out, batch, t, length, scored)
            if loss is not None:
                torch.autograd.backward(loss / self.update_every, inputs=[leaf, *head_params])
                with torch.no_grad():
                    estimator.accumulate(influence, leaf.grad)
                    if exact is not None and self.noise_clock % self.noise_every == 0:
                        g = reference.gradient(exact, leaf.grad)
                        error = (estimator.gradient(influence, leaf.grad) - g).norm() / g.norm().clamp(min=1e-30)
                        noise.append(error)
                losses.append(loss.detach())
            self.noise_clock += 1
            self.pending += 1
            if self.pending == self.update_every:
                self.pending = 0
                self.apply_update(update)
                if self.should_stop():
                    break
        self.state = (state, influence, exact)
        self.diagnostics = {k: v / steps for k, v in sums.items()}  # device tensors; the trainer reads them per row
        if noise:
            self.diagnostics["grad_noise_rel"] = torch.stack(noise).mean()
        self.step_losses = torch.stack(losses) if losses else None
        # one host synchronisation per batch; a non-finite step loss ends the run as diverged
        return check_finite(self.step_losses.mean()) if losses else float("nan")


ALGORITHMS = {"bptt": BPTT, "tbptt": TBPTT, "rtrl": Online, "uoro": Online, "kf_rtrl": Online, "ok": Online}


def build_algorithm(cfg: Any, model: SequenceModel, carry_state: bool) -> GradientAlgorithm:
    return ALGORITHMS[_name(cfg)](cfg, model, carry_state)
