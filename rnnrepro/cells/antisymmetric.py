"""AntisymmetricRNN (Chang et al., ICLR 2019), Eq. 12 and the gated Eq. 13.

    M   = W - W^T - gamma I                      (eigenvalues have real part exactly -gamma)
    h_t = h_{t-1} + eps * tanh(M h_{t-1} + V_h x_t + b_h)                                (Eq. 12)
    z_t = sigmoid(M h_{t-1} + V_z x_t + b_z);  h_t = h_{t-1} + eps * z_t * tanh(M h_{t-1} + V_h x_t + b_h)  (Eq. 13)

With ``param="triu"`` only the n(n-1)/2 strictly-upper-triangular entries of W are stored, the paper's parameter-
efficient form. Rows are batch samples here, so the runner multiplies by M^T = -(W - W^T) - gamma I.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import RecurrentCell, State


class AntisymmetricRNN(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, eps: float = 0.01, gamma: float = 0.01,
                 sigma_w: float = 1.0, gated: bool = False, param: str = "triu", init_on: str = "antisym",
                 init_scale: str = "variance", gate_bias_init: float = 0.0) -> None:
        super().__init__(input_size, hidden_size)
        self.eps, self.gamma, self.gated = float(eps), float(gamma), bool(gated)
        self.param = str(getattr(param, "value", param))
        init_on = str(getattr(init_on, "value", init_on))
        init_scale = str(getattr(init_scale, "value", init_scale))
        n, m = hidden_size, input_size
        self.register_buffer("triu_index", torch.triu_indices(n, n, offset=1), persistent=False)
        # V_h (and V_z when gated) stacked into one input projection: one product for all time steps.
        n_proj = 2 * n if self.gated else n
        self.input_weight = nn.Parameter(torch.empty(n_proj, m))
        self.input_bias = nn.Parameter(torch.zeros(n_proj))
        if self.param == "triu":
            self.w_triu = nn.Parameter(torch.empty(n * (n - 1) // 2))
        elif self.param == "full":
            self.w_full = nn.Parameter(torch.empty(n, n))
        else:
            raise ValueError(f"model.param must be triu or full, got {param!r}")

        # Paper: inputs N(0, 1/m), recurrent N(0, sigma_w^2/n) (variances). std_bug: community std/variance mix.
        input_std = 1.0 / math.sqrt(m) if init_scale == "variance" else 1.0 / m
        rec_std = sigma_w / math.sqrt(n) if init_scale == "variance" else sigma_w / n
        with torch.no_grad():
            nn.init.normal_(self.input_weight, 0.0, input_std)
            if self.gated:
                self.input_bias[n:].fill_(gate_bias_init)
            if self.param == "triu":
                # init_on=free_W: entries of W - W^T for an i.i.d. free W have variance 2 sigma_w^2 / n.
                scale = rec_std * (math.sqrt(2.0) if init_on == "free_W" else 1.0)
                nn.init.normal_(self.w_triu, 0.0, scale)
            elif init_on == "free_W":
                nn.init.normal_(self.w_full, 0.0, rec_std)
            else:
                self.w_full.zero_()
                self.w_full[self.triu_index[0], self.triu_index[1]] = torch.randn(n * (n - 1) // 2) * rec_std

    def antisymmetric_part(self) -> Tensor:
        """W - W^T (n x n)."""
        if self.param == "full":
            return self.w_full - self.w_full.t()
        n = self.hidden_size
        upper = self.w_triu.new_zeros(n, n).index_put((self.triu_index[0], self.triu_index[1]), self.w_triu)
        return upper - upper.t()

    def recurrent_matrix(self) -> Tensor:
        """M = W - W^T - gamma I, column-vector convention (M h)."""
        eye = torch.eye(self.hidden_size, device=self.input_weight.device, dtype=self.input_weight.dtype)
        return self.antisymmetric_part() - self.gamma * eye

    def project_inputs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.input_weight, self.input_bias)

    def prepare(self) -> Tensor:
        return self.recurrent_matrix().t().contiguous()

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        h = state[0]
        if not self.gated:
            return (h + self.eps * torch.tanh(torch.addmm(gx, h, ctx)),)
        shared = h @ ctx  # one product feeds both the gate and the candidate (Eq. 13)
        g_h, g_z = gx.chunk(2, 1)
        return (h + self.eps * torch.sigmoid(shared + g_z) * torch.tanh(shared + g_h),)

    def redundant_parameters(self) -> int:
        n = self.hidden_size
        return n * n - n * (n - 1) // 2 if self.param == "full" else 0
