"""The Recurrent Highway Network cell of the OK paper (Benzing et al. 2019; online_rtrl spec section 2.8).

Recurrence depth 1 with a coupled carry gate: z_t = [x_t, h_{t-1}, 1] W, W of shape (m + n + 1, 2n), split into the
candidate and carry pre-activations z^c, z^f;

    c_t = 2 sigmoid(z^c) - 1        (= tanh(z^c / 2); ``candidate=tanh`` is the common variant)
    f_t = sigmoid(z^f)              (transform gate tied: 1 - f_t)
    h_t = f_t * h_{t-1} + (1 - f_t) * c_t

All parameters sit in the one matrix W, so the immediate influence factorises as h_hat_t (x) D_t with
D_t = [diag((1 - f) c'), diag((h_{t-1} - c) f')] and H_t = diag(f) + D_t W_h^T (W_h the h-rows of W), the form the
online algorithms (UORO, KF-RTRL, OK) exploit. Initialisation as the OK code: W ~ N(0, init_std^2), init_std 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from rnnrepro.cells.base import KroneckerCell, KroneckerStep, RecurrentCell, State, add_grad
from rnnrepro.models import ModelConfig
from rnnrepro.schema import positive, register_schema, require

CANDIDATES = ("two_sigmoid_minus_one", "tanh")


# ------------------------------------------------------------------------------------------------- config schema
class RHNCandidate(str, Enum):
    two_sigmoid_minus_one = "two_sigmoid_minus_one"  # the OK code: 2 sigmoid(z) - 1 = tanh(z / 2)
    tanh = "tanh"


@register_schema("model", "rhn")
@dataclass
class RHNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.rhn.RHN"
    name: str = "rhn"
    candidate: RHNCandidate = RHNCandidate.two_sigmoid_minus_one
    init_std: float = 0.01
    readout_init_std: float | None = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.init_std, "model.init_std")
        require(self.readout_init_std is None or self.readout_init_std > 0, "model.readout_init_std",
                 f"must be > 0 or null, got {self.readout_init_std}")


class RHN(RecurrentCell, KroneckerCell):
    def __init__(self, input_size: int, hidden_size: int, candidate: str = "two_sigmoid_minus_one",
                 init_std: float = 0.01, readout_init_std: float | None = 0.01) -> None:
        super().__init__(input_size, hidden_size)
        self.candidate = str(getattr(candidate, "value", candidate))
        if self.candidate not in CANDIDATES:
            raise ValueError(f"model.candidate must be one of {CANDIDATES}, got {candidate!r}")
        self.weight = nn.Parameter(torch.randn(input_size + hidden_size + 1, 2 * hidden_size) * init_std)
        self.readout_init_std = readout_init_std  # read by build_model: the OK code draws W_out ~ N(0, 0.01^2)

    def _candidate(self, zc: Tensor) -> tuple[Tensor, Tensor]:
        """c and dc/dz^c."""
        if self.candidate == "tanh":
            c = torch.tanh(zc)
            return c, 1 - c * c
        s = torch.sigmoid(zc)
        return 2 * s - 1, 2 * s * (1 - s)

    # --- the shared runner (BPTT) ------------------------------------------------------------------------------
    def project_inputs(self, x: Tensor) -> Tensor:
        m = self.input_size
        return torch.addmm(self.weight[-1], x.reshape(-1, m), self.weight[:m]).view(*x.shape[:-1], -1)

    def prepare(self) -> Any:
        return self.weight[self.input_size : -1]  # W_h, (n, 2n)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        h = state[0]
        zc, zf = torch.addmm(gx, h, ctx).chunk(2, 1)
        c = self._candidate(zc)[0]
        f = torch.sigmoid(zf)
        return (c + f * (h - c),)

    # --- Kronecker form (online algorithms) --------------------------------------------------------------------
    def kron_width(self) -> int:
        return 2 * self.hidden_size

    def kron_step(self, x: Tensor, h: Tensor) -> KroneckerStep:
        h_hat = torch.cat([x, h, x.new_ones(x.shape[0], 1)], 1)
        zc, zf = (h_hat @ self.weight).chunk(2, 1)
        c, dc = self._candidate(zc)
        f = torch.sigmoid(zf)
        h_new = c + f * (h - c)
        alpha, beta = (1 - f) * dc, (h - c) * f * (1 - f)  # dh/dz^c and dh/dz^f, both diagonal
        D = torch.cat([torch.diag_embed(alpha), torch.diag_embed(beta)], 2)
        w_c, w_f = self.weight[self.input_size : -1].t().chunk(2, 0)  # (n, n) each: [i, j] = dz_i / dh_j
        # H = diag(f) + D W_h^T, formed elementwise (O(n^2)) since both blocks of D are diagonal
        H = alpha.unsqueeze(2) * w_c + beta.unsqueeze(2) * w_f
        H.diagonal(dim1=1, dim2=2).add_(f)
        return KroneckerStep(h_new, h_hat, D, H)

    def kron_add_grad(self, grad_w: Tensor) -> None:
        add_grad(self.weight, grad_w)
