"""Baselines: tanh RNN, iRNN, GRU and LSTM.

Each cell owns a one-layer ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` for its parameters. ``impl="fused"`` runs that
module (cuDNN on GPU, oneDNN on CPU); ``impl="cell"`` runs the same parameters through the shared step-by-step
runner, which is what variants of these cells and the online training algorithms build on. Both paths compute the
same function (tests/test_cells.py checks it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import KroneckerCell, KroneckerStep, RecurrentCell, State, add_grad


class _FusedCell(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, module: nn.RNNBase, impl: str = "fused") -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = module
        self.impl = str(getattr(impl, "value", impl))
        if self.impl not in ("fused", "cell"):
            raise ValueError(f"model.impl must be fused or cell, got {impl!r}")

    @property
    def w_ih(self) -> Tensor:
        return self.rnn.weight_ih_l0

    @property
    def w_hh(self) -> Tensor:
        return self.rnn.weight_hh_l0

    def _hx(self, state: State) -> Any:
        return state[0].unsqueeze(0).contiguous()

    def _state_from(self, hn: Any) -> State:
        return (hn[0],)

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        if self.impl == "cell":
            return super().forward(x, state, return_sequence)
        out, hn = self.rnn(x, None if state is None else self._hx(state))
        return (out if return_sequence else out[-1]), self._state_from(hn)


class TanhRNN(_FusedCell, KroneckerCell):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Kronecker form: W = [W_ih^T; W_hh^T; (b_ih + b_hh)^T],
    K = n, D_t = diag(phi'(z_t)), H_t = D_t W_hh."""

    nonlinearity = "tanh"

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused") -> None:
        super().__init__(input_size, hidden_size, nn.RNN(input_size, hidden_size, nonlinearity=self.nonlinearity),
                         impl)

    def project_inputs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w_ih, self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        pre = torch.addmm(gx, state[0], self.w_hh.t())
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

    def redundant_parameters(self) -> int:
        return self.hidden_size  # only b_ih + b_hh matters

    def kron_width(self) -> int:
        return self.hidden_size

    def kron_step(self, x: Tensor, h: Tensor) -> KroneckerStep:
        z = torch.addmm(F.linear(x, self.w_ih, self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0), h, self.w_hh.t())
        if self.nonlinearity == "tanh":
            h_new = torch.tanh(z)
            slope = 1 - h_new * h_new
        else:
            h_new = torch.relu(z)
            slope = (z > 0).to(z.dtype)
        h_hat = torch.cat([x, h, x.new_ones(x.shape[0], 1)], 1)
        return KroneckerStep(h_new, h_hat, torch.diag_embed(slope), slope.unsqueeze(2) * self.w_hh)

    def kron_add_grad(self, grad_w: Tensor) -> None:
        m, n = self.input_size, self.hidden_size
        add_grad(self.w_ih, grad_w[:m].t())
        add_grad(self.w_hh, grad_w[m : m + n].t())
        add_grad(self.rnn.bias_ih_l0, grad_w[m + n])  # both biases receive the gradient of their sum
        add_grad(self.rnn.bias_hh_l0, grad_w[m + n])


class IRNN(TanhRNN):
    """iRNN (Le, Jaitly, Hinton 2015): ReLU RNN with W_hh = identity_scale * I and zero biases at init."""

    nonlinearity = "relu"

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", identity_scale: float = 1.0) -> None:
        super().__init__(input_size, hidden_size, impl)
        with torch.no_grad():
            self.w_hh.copy_(identity_scale * torch.eye(hidden_size))
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()


class GRU(_FusedCell):
    """PyTorch's GRU: r, z gates; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) n + z h."""

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused") -> None:
        super().__init__(input_size, hidden_size, nn.GRU(input_size, hidden_size), impl)

    def project_inputs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w_ih, self.rnn.bias_ih_l0)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        h = state[0]
        gh = torch.addmm(self.rnn.bias_hh_l0, h, self.w_hh.t())
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (n + z * (h - n),)

    def redundant_parameters(self) -> int:
        return 2 * self.hidden_size  # b_ir + b_hr and b_iz + b_hz; b_hn is inside r * (...)


class LSTM(_FusedCell):
    """PyTorch's LSTM (gate order i, f, g, o); state (h, c); forget-gate bias initialised to ``forget_bias``."""

    state_names = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", forget_bias: float = 1.0) -> None:
        super().__init__(input_size, hidden_size, nn.LSTM(input_size, hidden_size), impl)
        n = hidden_size
        with torch.no_grad():
            self.rnn.bias_ih_l0[n : 2 * n].fill_(forget_bias)
            self.rnn.bias_hh_l0[n : 2 * n].zero_()

    def _hx(self, state: State) -> Any:
        return (state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous())

    def _state_from(self, hn: Any) -> State:
        return (hn[0][0], hn[1][0])

    def project_inputs(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w_ih, self.rnn.bias_ih_l0 + self.rnn.bias_hh_l0)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        h, c = state
        i, f, g, o = torch.addmm(gx, h, self.w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def redundant_parameters(self) -> int:
        return 4 * self.hidden_size  # one bias vector per gate is free
