"""The MomentumRNN LSTM family (Nguyen et al., NeurIPS 2020): the authors' LSTM and its Momentum, Adam, RMSProp and
Nesterov (restart) variants, equations (M1)-(M6) and (M11) of shared/papers/momentum_rnn.md, as the official code
computes them [code: minhtannguyen/MomentumRNN mnist-timit/momentumnet.py, ptb/momentumnet.py].

Notation: a_t = W x_t + b_W (the input projection with its bias), r_t = U h_{t-1} + b_U; gates (i, f, g, o) of
``pre``; c_t = σ(f) c_{t-1} + σ(i) tanh(g), h_t = σ(o) tanh(c_t). μ, s, β are fixed floats (not learned), so every
variant has the baseline's parameters (two bias vectors: x2h and h2h, as the code's two nn.Linear).

- lstm (M1): pre = a_t + r_t
- momentum (M2): v_t = μ v_{t-1} + s a_t; pre = v_t + r_t
- adam (M3): v_t as (M2); m_t = β m_{t-1} + (1-β) a_t²; pre = v_t / sqrt(m_t + eps) + r_t (no bias correction)
- rmsprop (M4): adam with μ = 0 (a setting: the config refuses rmsprop with μ ≠ 0)
- nesterov, form A (M5, MNIST/TIMIT code): v_t = r_t - s a_t; pre = v_t + c_k (v_t - v_{t-1})
- nesterov, form B (M6, PTB code): v_t = c_k v_{t-1} + s a_t; pre = v_t + r_t
with c_k = (k-1)/(k+2), k = 1 at the first step of each forward call (each sequence, or each BPTT window) and reset
after every ``restart`` steps (M11; 0: never).

Init (the code's reset_parameters): W orthogonal, U = torch.nn.init.eye_ of the (4N, N) matrix (identity in the input
gate's block, zeros in the others), biases 0 except the forget slices of both, ``fg_init`` (1 for MNIST/PTB, -4 for
TIMIT). ``init=torch_default`` keeps nn.Linear's init instead.

Speed: ``impl=fused`` runs torch's fused LSTM kernel (the one nn.LSTM calls). The momentum and form-B velocities
are linear in a_t and start at 0: v_t = Σ_j L[t, j] s a_t = W (s Σ_j L[t, j] x_j) + b_W (s Σ_j L[t, j]), with L
lower-triangular (L[t, j] = μ^(t-j) for momentum, the product of the c_k over j < k' ≤ t for form B). So the fused
kernel runs on the filtered inputs [s L x, s L 1] with the weight [W, b_W], exactly. The filter is one (T, T)
product, cheap beside the recurrence for the paper's inputs (m = 1 on MNIST). Adam, RMSProp and form A have no fused
path yet (``impl=cell``). A carried velocity (a language model's state across windows) is a start v_0 ≠ 0, which
the filter does not cover: those windows run the step path, the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import CellImpl, RecurrentCell, State
from rnnrepro.models import ModelConfig
from rnnrepro.schema import register_schema, require


class MomentumVariant(str, Enum):
    lstm = "lstm"
    momentum = "momentum"
    adam = "adam"
    rmsprop = "rmsprop"
    nesterov = "nesterov"


class NesterovForm(str, Enum):
    A = "A"  # mnist-timit/momentumnet.py NesterovLSTMCell
    B = "B"  # ptb/momentumnet.py


class MomentumInit(str, Enum):
    authors = "authors"  # W orthogonal, U eye_, biases 0, forget slices fg_init
    torch_default = "torch_default"  # nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both


FUSED_VARIANTS = ("lstm", "momentum", "nesterov_B")


@register_schema("model", "momentum_lstm")
@dataclass
class MomentumLSTMConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.momentum.MomentumLSTM"
    name: str = "momentum_lstm"
    impl: CellImpl = CellImpl.fused
    variant: MomentumVariant = MomentumVariant.momentum
    mu: float = 0.9  # the code's --mu default
    step: float = 0.1  # s, the code's --epsilon (default 0.1)
    beta: float = 0.9  # the code's --mus (MNIST/TIMIT default 0.9)
    adam_eps: float = 1e-16  # inside the sqrt [code]
    restart: int = 0  # nesterov: reset k after this many time steps (0: never)
    nesterov_form: NesterovForm = NesterovForm.A
    init: MomentumInit = MomentumInit.authors
    fg_init: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        variant = str(getattr(self.variant, "value", self.variant))
        form = str(getattr(self.nesterov_form, "value", self.nesterov_form))
        impl = str(getattr(self.impl, "value", self.impl))
        require(0 <= self.mu < 1, "model.mu", f"must be in [0, 1) (the velocity's decay), got {self.mu}")
        require(0 <= self.beta < 1, "model.beta", f"must be in [0, 1), got {self.beta}")
        require(self.adam_eps > 0, "model.adam_eps", f"must be > 0, got {self.adam_eps}")
        require(self.restart >= 0, "model.restart", f"must be >= 0 (0: never restart), got {self.restart}")
        require(variant != "rmsprop" or self.mu == 0, "model.mu",
                f"RMSPropLSTM is AdamLSTM with mu = 0 (spec M4); got model.mu={self.mu}: set model.mu=0.0, or "
                "model.variant=adam")
        key = f"nesterov_{form}" if variant == "nesterov" else variant
        require(impl == "cell" or key in FUSED_VARIANTS, "model.impl",
                f"fused: the {variant} variant{' (form ' + form + ')' if variant == 'nesterov' else ''} has no fused "
                "path yet (fused: lstm, momentum, nesterov form B); set model.impl=cell")


def restart_coefficients(steps: int, restart: int) -> list[float]:
    """c_k = (k-1)/(k+2) for the steps of one forward call: k = 1 first, reset to 1 after every ``restart`` steps."""
    out, k = [], 1
    for _ in range(steps):
        out.append((k - 1.0) / (k + 2.0))
        k = 1 if restart > 0 and k % restart == 0 else k + 1
    return out


class MomentumLSTM(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", variant: str = "momentum",
                 mu: float = 0.9, step: float = 0.1, beta: float = 0.9, adam_eps: float = 1e-16, restart: int = 0,
                 nesterov_form: str = "A", init: str = "authors", fg_init: float = 1.0) -> None:
        super().__init__(input_size, hidden_size)
        self.impl = str(getattr(impl, "value", impl))
        self.variant = str(getattr(variant, "value", variant))
        self.form = str(getattr(nesterov_form, "value", nesterov_form))
        self.mu, self.s, self.beta, self.eps, self.restart = float(mu), float(step), float(beta), float(adam_eps), \
            int(restart)
        self.x2h = nn.Linear(input_size, 4 * hidden_size)
        self.h2h = nn.Linear(hidden_size, 4 * hidden_size)
        if str(getattr(init, "value", init)) == "authors":
            n = hidden_size
            with torch.no_grad():
                nn.init.orthogonal_(self.x2h.weight)
                nn.init.eye_(self.h2h.weight)
                for bias in (self.x2h.bias, self.h2h.bias):
                    bias.zero_()
                    bias[n : 2 * n].fill_(fg_init)
        self.state_names = {"lstm": ("h", "c"), "momentum": ("h", "c", "v"), "adam": ("h", "c", "v", "m"),
                            "rmsprop": ("h", "c", "v", "m"), "nesterov": ("h", "c", "v")}[self.variant]

    @property
    def fused_path(self) -> bool:
        key = f"nesterov_{self.form}" if self.variant == "nesterov" else self.variant
        return self.impl == "fused" and key in FUSED_VARIANTS

    def init_state(self, batch_size: int, like: Tensor) -> State:
        sizes = {"h": self.hidden_size, "c": self.hidden_size, "v": 4 * self.hidden_size, "m": 4 * self.hidden_size}
        return tuple(like.new_zeros(batch_size, sizes[name]) for name in self.state_names)

    def recurrent_weight_names(self) -> list[str]:
        return ["h2h.weight"]

    def redundant_parameters(self) -> int:
        # b_W and b_U enter as one sum only where the input bias is not filtered: the plain LSTM, momentum at mu = 0
        same_time = self.variant == "lstm" or (self.variant == "momentum" and self.mu == 0)
        return 4 * self.hidden_size if same_time else 0

    # --- the step path (the reference) ---------------------------------------------------------------------
    def project_inputs(self, x: Tensor) -> Tensor:
        return self.x2h(x)

    def _cell(self, pre: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = pre.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        """One step; ``ctx`` is c_k for the Nesterov variant (forward supplies it), unused otherwise."""
        h, c = state[0], state[1]
        r = self.h2h(h)
        if self.variant == "lstm":
            return self._cell(gx + r, c)
        if self.variant == "momentum":
            v = self.mu * state[2] + self.s * gx
            return (*self._cell(v + r, c), v)
        if self.variant in ("adam", "rmsprop"):
            v = self.mu * state[2] + self.s * gx
            m = self.beta * state[3] + (1.0 - self.beta) * gx * gx
            return (*self._cell(v / torch.sqrt(m + self.eps) + r, c), v, m)
        if ctx is None:
            raise ValueError("the Nesterov variant's step needs its restart coefficient c_k (MomentumLSTM.forward)")
        if self.form == "A":
            v = r - self.s * gx
            return (*self._cell(v + ctx * (v - state[2]), c), v)
        v = ctx * state[2] + self.s * gx
        return (*self._cell(v + r, c), v)

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        """x: (T, B, m). k restarts at 1 in every call (the code: per sequence, and per BPTT window in PTB)."""
        memoryless = self.variant == "momentum" and self.mu == 0  # v_0 does not enter
        carried = state is not None and len(state) > 2 and not memoryless and bool(state[2].any())
        if self.fused_path and not carried:
            return self._forward_fused(x, state, return_sequence)
        if state is None:
            state = self.init_state(x.shape[1], x)
        gx = self.project_inputs(x)
        coefficients = restart_coefficients(x.shape[0], self.restart) if self.variant == "nesterov" else None
        outputs = []
        for t, gx_t in enumerate(gx.unbind(0)):
            state = self.step(gx_t, state, coefficients[t] if coefficients else None)
            if return_sequence:
                outputs.append(state[0])
        return (torch.stack(outputs, 0) if return_sequence else state[0]), state

    # --- the fused path ------------------------------------------------------------------------------------
    def velocity_filter(self, steps: int, like: Tensor) -> Tensor | None:
        """L (T, T) with v_t = Σ_j L[t, j] s a_j from v_0 = 0; None where L is the identity (plain LSTM, μ = 0)."""
        if self.variant == "lstm" or (self.variant == "momentum" and self.mu == 0):
            return None
        if self.variant == "momentum":
            t = torch.arange(steps, dtype=torch.float64)
            lag = t[:, None] - t[None, :]
            return torch.where(lag >= 0, self.mu ** lag.clamp(min=0), 0.0).to(like)
        coefficients = torch.tensor(restart_coefficients(steps, self.restart), dtype=torch.float64)
        filt = torch.zeros(steps, steps, dtype=torch.float64)
        for t in range(steps):  # L[t, j] = c_t L[t-1, j] (j < t), L[t, t] = 1
            if t:
                filt[t, :t] = coefficients[t] * filt[t - 1, :t]
            filt[t, t] = 1.0
        return filt.to(like)

    def _forward_fused(self, x: Tensor, state: State | None, return_sequence: bool) -> tuple[Tensor, State]:
        steps, batch = x.shape[0], x.shape[1]
        filt = self.velocity_filter(steps, x)
        if self.variant == "lstm":
            inputs, w_ih, b_ih = x, self.x2h.weight, self.x2h.bias
        elif filt is None:  # momentum at μ = 0: v_t = s a_t
            inputs, w_ih, b_ih = x, self.s * self.x2h.weight, self.s * self.x2h.bias
        else:
            ones = x.new_ones(steps, batch, 1)
            inputs = self.s * torch.einsum("tj,jbm->tbm", filt, torch.cat([x, ones], -1))
            w_ih, b_ih = torch.cat([self.x2h.weight, self.x2h.bias[:, None]], 1), torch.zeros_like(self.x2h.bias)
        zeros = x.new_zeros(1, batch, self.hidden_size)
        hx = (zeros, zeros) if state is None else (state[0][None], state[1][None])
        out, h_n, c_n = torch.lstm(inputs, hx, [w_ih, self.h2h.weight, b_ih, self.h2h.bias], True, 1, 0.0,
                                   self.training, False, False)
        final: tuple[Tensor, ...] = (h_n[0], c_n[0])
        if self.variant != "lstm":  # the last velocity, for a caller that carries state (exact: v_T = Σ L[T, j] s a_j)
            last = F.linear(inputs[-1], w_ih, b_ih) if filt is not None else self.s * self.x2h(x[-1])
            final = (*final, last)
        return (out if return_sequence else out[-1]), final
