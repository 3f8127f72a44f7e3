"""SBO-RNN (Zhang et al., NeurIPS 2021): each hidden state is one solver step on a lower-level problem.

Lower level at step t (row-vector form of shared/papers/sbo_rnn.md B0/B0'):

    f_t(h)    = 1/2 || alpha h - relu(U h + W x_t + b) ||^2
    grad f_t  = alpha e - U^T (D e),   e = alpha h - phi,  phi = relu(U h + W x_t + b),  D = 1[phi > 0]

Solvers (one step per time step, h_0 = v_0 = y_0 = 0):
    sgd  (Eq. 7):  h_t = h - eta grad f_t(h)
    shb  (Eq. 8):  v_t = mu v - eta grad f_t(h);  h_t = h + v_t
    snag (Eq. 9):  y_t = h - eta grad f_t(h);     h_t = y_t + mu (y_t - y_{t-1})   (the head reads h_T, not y_T)

Recurrent matrix U: dense_lowrank I + P Q (rank r), sparse w I (one scalar, init 0, as the official code), full, or
diagonal. Backprop runs through the gradient formula itself (U appears inside phi and in U^T D), the mask D is a
constant. ``grad_impl="elementwise"`` needs O(B n) memory per step; ``"dense_diag"`` forms the official code's
B x n x n matrices and exists only to check the two agree.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import RecurrentCell, State


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


class SBORNN(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, solver: str = "sgd", recurrent: str = "dense_lowrank",
                 rank: int = 50, eta: float = 1e-3, mu: float = 0.5, learn_mu: bool = True, alpha: float = 1.0,
                 train_recurrent: bool = True, grad_impl: str = "elementwise") -> None:
        super().__init__(input_size, hidden_size)
        self.solver, self.recurrent, self.grad_impl = _value(solver), _value(recurrent), _value(grad_impl)
        if self.solver not in ("sgd", "shb", "snag"):
            raise ValueError(f"model.solver must be sgd, shb or snag, got {solver!r}")
        self.state_names = ("h",) if self.solver == "sgd" else ("h", "v" if self.solver == "shb" else "y")
        self.eta, self.alpha = float(eta), float(alpha)
        n, m = hidden_size, input_size
        bound = 1.0 / math.sqrt(n)
        self.input = nn.Linear(m, n)
        nn.init.uniform_(self.input.weight, -bound, bound)
        nn.init.uniform_(self.input.bias, -bound, bound)

        # sbo.train_recurrent=false keeps U's factors as buffers: the official code's never-trained U (a bug).
        register = self.register_parameter if train_recurrent else self.register_buffer
        wrap = nn.Parameter if train_recurrent else (lambda t: t)
        if self.recurrent == "dense_lowrank":
            register("P", wrap(torch.empty(n, rank).uniform_(-bound, bound)))
            register("Q", wrap(torch.empty(rank, n).uniform_(-bound, bound)))
        elif self.recurrent == "sparse":
            register("w", wrap(torch.zeros(())))
        elif self.recurrent == "full":
            register("U", wrap(torch.eye(n) + torch.empty(n, n).uniform_(-1.0 / n, 1.0 / n)))  # [inference]
        elif self.recurrent == "diagonal":
            register("d", wrap(torch.zeros(n)))
        else:
            raise ValueError(f"model.recurrent must be dense_lowrank, sparse, full or diagonal, got {recurrent!r}")
        mu_t = torch.tensor(float(mu))
        if learn_mu:
            self.mu = nn.Parameter(mu_t)
        else:
            self.register_buffer("mu", mu_t)

    # U as either a dense matrix (kind "matrix") or a scalar / vector acting elementwise (kind "diag").
    def prepare(self) -> tuple[str, Tensor]:
        if self.recurrent == "dense_lowrank":
            eye = torch.eye(self.hidden_size, device=self.P.device, dtype=self.P.dtype)
            return "matrix", eye + self.P @ self.Q
        if self.recurrent == "full":
            return "matrix", self.U
        return "diag", self.w if self.recurrent == "sparse" else self.d

    def recurrent_matrix(self) -> Tensor:
        kind, u = self.prepare()
        if kind == "matrix":
            return u
        return torch.diag(u.expand(self.hidden_size))

    def project_inputs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.input.weight, self.input.bias)

    def lower_level_grad(self, h: Tensor, gx: Tensor, ctx: tuple[str, Tensor]) -> Tensor:
        """grad_h f_t at h (B, n), for the step whose input projection is gx = W x_t + b."""
        kind, u = ctx
        phi = F.relu(torch.addmm(gx, h, u.t()) if kind == "matrix" else gx + h * u)
        e = self.alpha * h - phi
        mask = (phi > 0).to(h.dtype)
        if self.grad_impl == "dense_diag":
            U = u if kind == "matrix" else torch.diag(u.expand(self.hidden_size))
            eye = torch.eye(self.hidden_size, device=h.device, dtype=h.dtype)
            jac = self.alpha * eye - U.t().unsqueeze(0) * mask.unsqueeze(1)  # (B, n, n): alpha I - U^T D
            return torch.bmm(jac, e.unsqueeze(2)).squeeze(2)
        de = mask * e
        return self.alpha * e - (de @ u if kind == "matrix" else de * u)

    def lower_level_objective(self, h: Tensor, gx: Tensor) -> Tensor:
        """f_t(h) per sample (B,), for tests and diagnostics."""
        kind, u = self.prepare()
        phi = F.relu(torch.addmm(gx, h, u.t()) if kind == "matrix" else gx + h * u)
        return 0.5 * (self.alpha * h - phi).pow(2).sum(1)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        h = state[0]
        descent = self.eta * self.lower_level_grad(h, gx, ctx)
        if self.solver == "sgd":
            return (h - descent,)
        if self.solver == "shb":
            v = self.mu * state[1] - descent
            return h + v, v
        y = h - descent
        return y + self.mu * (y - state[1]), y
