"""The MomentumRNN orthogonal family (Nguyen et al., NeurIPS 2020): DTRIV (dynamic trivialisation, Casado 2019) and
its Momentum, Adam, RMSProp and Nesterov variants, equations (M7)-(M10), (M12), (M13) of
shared/papers/momentum_rnn.md, as the official code computes them [code: minhtannguyen/MomentumRNN
mnist-timit/orthogonal.py, parametrization.py, initialization.py, mnist.py].

Row-vector form, a_t = W x_t (no input bias), B orthogonal (N, N):

- dtriv (M7): h_t = modReLU(a_t + h_{t-1} B)
- momentum (M8): v_t = μ v_{t-1} + s a_t; h_t = modReLU(v_t + h_{t-1} B)
- adam (M9): v_t as (M8); m_t = β m_{t-1} + (1-β) a_t²; h_t = modReLU(v_t / sqrt(m_t + eps) + h_{t-1} B)
- rmsprop: adam with μ = 0 (a setting; the config refuses rmsprop with μ ≠ 0)
- nesterov (M10, form B, the only one the code runs): v_t = c_k v_{t-1} + s a_t, c_k = (k-1)/(k+2) with the restart
  counter of the LSTM family (M11); h_t = modReLU(v_t + h_{t-1} B)

modReLU (M12): sign(z) relu(|z| + b), b ~ U(-0.01, 0.01). W: kaiming_normal_ (relu) [code].

Orthogonal parametrisation (M13): B = base · expm(S), S = triu(A, 1) - triu(A, 1)ᵀ. ``A`` has its own optimiser,
RMSprop(lr = ``orth_lr``) as the code's ``optim_orth`` (:meth:`DTRIV.own_optimizers`). base starts at I and A at the
``init`` skew matrix (cayley: MNIST default, henaff: TIMIT default; block-diagonal 2x2 rotations). Dynamic
trivialisation: a rebase sets base <- base · expm(S) and A <- 0. The first one happens before the first forward
(the code: at the first B it builds), then one after every ``rebase_every`` optimiser steps (null: the code's
K = "infty", the first rebase only). Every ``project_every`` rebases (counting the first) base is re-projected onto
the orthogonal group, U Vᵀ of its SVD (QR where the SVD fails). The counters are buffers: resume is exact.

Two differences from the code, both about what happens around a rebase, neither changes a forward value:
- the code rebases when it next builds B (first forward after a backward, also an evaluation's), here after the
  optimiser step; for K = 1 and K = infty (every preset) the two schedules give the same B at every forward;
- the code's rebase writes the new base and A = 0 in place through ``.data`` into tensors the pending backward has
  saved, so a rebase step's gradient mixes the new base with the old exponent's derivative (an O(lr) error, a bug:
  the spec's decision rule keeps the exact gradient here, that of base · expm(S) at the A the forward used).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import RecurrentCell, State
from rnnrepro.cells.momentum import restart_coefficients
from rnnrepro.models import ModelConfig
from rnnrepro.schema import positive, register_schema, require


class DTRIVVariant(str, Enum):
    dtriv = "dtriv"
    momentum = "momentum"
    adam = "adam"
    rmsprop = "rmsprop"
    nesterov = "nesterov"


class SkewInit(str, Enum):
    cayley = "cayley"  # initialization.py cayley_init_ (mnist.py default)
    henaff = "henaff"  # initialization.py henaff_init_ (timit_div.py default)


@register_schema("model", "momentum_dtriv")
@dataclass
class MomentumDTRIVConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.dtriv.DTRIV"
    name: str = "momentum_dtriv"
    variant: DTRIVVariant = DTRIVVariant.momentum
    mu: float = 0.9  # the code's --mu default
    step: float = 0.1  # s, the code's --epsilon default
    beta: float = 0.9  # adam/rmsprop: the code's --mus default
    adam_eps: float = 1e-16  # inside the sqrt [code]
    restart: int = 0  # nesterov: reset k after this many time steps (0: never)
    init: SkewInit = SkewInit.cayley
    rebase_every: int | None = 100  # K, optimiser steps between rebases; null: the code's "infty" (the first only)
    project_every: int = 100  # M, rebases between projections of base onto the orthogonal group [code]
    orth_lr: float = 7e-5  # A's own RMSprop [code: --lr_orth default]
    orth_alpha: float = 0.99  # torch.optim.RMSprop default, as the code's optim_orth
    orth_eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        variant = str(getattr(self.variant, "value", self.variant))
        require(0 <= self.mu < 1, "model.mu", f"must be in [0, 1) (the velocity's decay), got {self.mu}")
        require(0 <= self.beta < 1, "model.beta", f"must be in [0, 1), got {self.beta}")
        positive(self.adam_eps, "model.adam_eps")
        require(self.restart >= 0, "model.restart", f"must be >= 0 (0: never restart), got {self.restart}")
        require(variant != "rmsprop" or self.mu == 0, "model.mu",
                f"RMSPropDTRIV is AdamDTRIV with mu = 0; got model.mu={self.mu}: set model.mu=0.0, or "
                "model.variant=adam")
        require(self.rebase_every is None or self.rebase_every >= 1, "model.rebase_every",
                f"must be >= 1 optimiser steps, or null (the code's K = infty: rebase once, at the start); got "
                f"{self.rebase_every}")
        require(self.project_every >= 1, "model.project_every", f"must be >= 1, got {self.project_every}")
        positive(self.orth_lr, "model.orth_lr")
        require(0 <= self.orth_alpha < 1, "model.orth_alpha", f"must be in [0, 1), got {self.orth_alpha}")
        positive(self.orth_eps, "model.orth_eps")
        require(self.num_layers == 1, "model.num_layers", "DTRIV is single-layer here (as the code); set 1")


def skew(a: Tensor) -> Tensor:
    upper = a.triu(1)
    return upper - upper.T


def block_rotation_skew_(a: Tensor, angles: Tensor) -> Tensor:
    """A <- the skew matrix with ``angles`` at (2i, 2i+1) and minus them at (2i+1, 2i) (one 2x2 block per pair)."""
    n = a.shape[0]
    init = torch.zeros(n, n, dtype=a.dtype)
    idx = torch.arange(0, 2 * angles.numel(), 2)
    init[idx, idx + 1] = angles.to(a.dtype)
    with torch.no_grad():
        a.copy_(init - init.T)
    return a


def init_skew_(a: Tensor, kind: str) -> Tensor:
    """The code's initialisers: henaff, angles U(-π, π); cayley, θ ~ U(0, π/2) mapped to -sqrt((1-cos θ)/(1+cos θ))."""
    pairs = a.shape[0] // 2
    if kind == "henaff":
        return block_rotation_skew_(a, torch.empty(pairs, dtype=torch.float64).uniform_(-math.pi, math.pi))
    theta = torch.empty(pairs, dtype=torch.float64).uniform_(0.0, math.pi / 2)
    return block_rotation_skew_(a, -torch.sqrt((1.0 - torch.cos(theta)) / (1.0 + torch.cos(theta))))


def project_orthogonal(base: Tensor) -> Tensor:
    """The nearest orthogonal matrix, U Vᵀ of the SVD; QR's Q where the SVD does not converge (as the code)."""
    try:
        u, _, vh = torch.linalg.svd(base)
        return u @ vh
    except RuntimeError:
        return torch.linalg.qr(base).Q


def mod_relu(z: Tensor, b: Tensor) -> Tensor:
    return torch.sign(z) * F.relu(z.abs() + b)


class DTRIV(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, variant: str = "momentum", mu: float = 0.9,
                 step: float = 0.1, beta: float = 0.9, adam_eps: float = 1e-16, restart: int = 0,
                 init: str = "cayley", rebase_every: int | None = 100, project_every: int = 100,
                 orth_lr: float = 7e-5, orth_alpha: float = 0.99, orth_eps: float = 1e-8) -> None:
        super().__init__(input_size, hidden_size)
        self.variant = str(getattr(variant, "value", variant))
        self.mu, self.s, self.beta, self.eps, self.restart = float(mu), float(step), float(beta), float(adam_eps), \
            int(restart)
        self.rebase_every, self.project_every = rebase_every, int(project_every)
        self.orth_lr, self.orth_alpha, self.orth_eps = float(orth_lr), float(orth_alpha), float(orth_eps)
        self.input_kernel = nn.Linear(input_size, hidden_size, bias=False)
        nn.init.kaiming_normal_(self.input_kernel.weight, nonlinearity="relu")
        self.A = nn.Parameter(init_skew_(torch.empty(hidden_size, hidden_size), str(getattr(init, "value", init))))
        self.modrelu_bias = nn.Parameter(torch.empty(hidden_size).uniform_(-0.01, 0.01))
        self.register_buffer("base", torch.eye(hidden_size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # optimiser steps since the last rebase
        self.register_buffer("rebases", torch.zeros((), dtype=torch.long))
        self.state_names = {"dtriv": ("h",), "momentum": ("h", "v"), "nesterov": ("h", "v"),
                            "adam": ("h", "v", "m"), "rmsprop": ("h", "v", "m")}[self.variant]
        self.rebase()  # the code's first B: k = 0 rebases before anything else

    # --- the orthogonal matrix -------------------------------------------------------------------------------
    def recurrent_matrix(self) -> Tensor:
        return self.base @ torch.linalg.matrix_exp(skew(self.A))

    @torch.no_grad()
    def rebase(self) -> None:
        self.base.copy_(self.recurrent_matrix())
        self.A.zero_()
        self.steps.zero_()
        self.rebases += 1
        if int(self.rebases) % self.project_every == 0:
            self.base.copy_(project_orthogonal(self.base))

    def after_optimizer_step(self) -> None:
        self.steps += 1
        if self.rebase_every is not None and int(self.steps) >= self.rebase_every:
            self.rebase()

    def own_optimizers(self) -> list[tuple[list[nn.Parameter], Callable[[list], torch.optim.Optimizer]]]:
        """A is trained by its own RMSprop (the code's ``optim_orth``), the rest by the run's optimizer."""
        return [([self.A], lambda params: torch.optim.RMSprop(params, lr=self.orth_lr, alpha=self.orth_alpha,
                                                                  eps=self.orth_eps))]

    def redundant_parameters(self) -> int:
        n = self.hidden_size  # A is used only through its strict upper triangle: N(N-1)/2 free entries
        return n * n - n * (n - 1) // 2

    # --- the step path -----------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch_size, self.hidden_size) for _ in self.state_names)

    def project_inputs(self, x: Tensor) -> Tensor:
        return self.input_kernel(x)

    def prepare(self) -> Tensor:
        return self.recurrent_matrix()

    def _input_term(self, a: Tensor, state: State, c_k: float | None) -> tuple[Tensor, State]:
        """The input side of one step, and the new velocity (and second moment)."""
        if self.variant == "dtriv":
            return a, ()
        if self.variant == "momentum":
            v = self.mu * state[1] + self.s * a
            return v, (v,)
        if self.variant == "nesterov":
            v = c_k * state[1] + self.s * a
            return v, (v,)
        v = self.mu * state[1] + self.s * a
        m = self.beta * state[2] + (1.0 - self.beta) * a * a
        return v / torch.sqrt(m + self.eps), (v, m)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        """``ctx``: (B, c_k) from :meth:`forward`, or B alone (c_k = 0, a first step)."""
        recurrent, c_k = ctx if isinstance(ctx, tuple) else (ctx, 0.0)
        u, extra = self._input_term(gx, state, c_k)
        return (mod_relu(u + state[0] @ recurrent, self.modrelu_bias), *extra)

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        """x: (T, B, m). k restarts at 1 in every call, as the LSTM family's."""
        if state is None:
            state = self.init_state(x.shape[1], x)
        recurrent = self.prepare()
        coefficients = restart_coefficients(x.shape[0], self.restart) if self.variant == "nesterov" else None
        outputs = []
        for t, a_t in enumerate(self.project_inputs(x).unbind(0)):
            state = self.step(a_t, state, (recurrent, coefficients[t] if coefficients else 0.0))
            if return_sequence:
                outputs.append(state[0])
        return (torch.stack(outputs, 0) if return_sequence else state[0]), state
