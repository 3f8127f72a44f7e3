"""The cell interface and the shared sequence runner.

A cell is one module with a one-step update and a declared state. The runner projects the inputs of all time steps
with one matrix product, then iterates the recurrence over ``unbind(0)`` views. Never index ``gx[t]`` on a tensor
that needs grad inside the loop: each step's backward would then materialise a full (T, B, k) gradient, making
backward quadratic in T (73x slower at T=784, shared/design/performance.md).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

State = tuple[Tensor, ...]


class CellImpl(str, Enum):
    """``model.impl``: fused (a whole-sequence kernel: torch's fused module or a hand-written Function) or cell
    (the shared step-by-step runner)."""

    fused = "fused"
    cell = "cell"


class NativeCellImpl(str, Enum):
    """``model.impl`` of a cell that also has a C++ kernel (rnnrepro/native): native runs the whole sequence forward
    and the whole backward in one C++ call each, the same equations as fused (its reference), and falls back to fused
    with one warning where no compiler is found."""

    fused = "fused"
    cell = "cell"
    native = "native"


class RecurrentCell(nn.Module):
    """Base class. Subclasses set ``state_names`` and implement ``project_inputs`` and ``step``.

    - ``project_inputs(x)``: (T, B, m) -> (T, B, k), the input-dependent part of every step, in one product.
    - ``prepare()``: per-sequence constants (e.g. the recurrent matrix built from its free parameters), computed once
      per forward call instead of once per step.
    - ``step(gx_t, state, ctx)``: one step of the recurrence; returns the new state tuple.
    - ``output(state)``: the hidden vector fed to the head (default: the first state component).

    Online algorithms (RTRL and relatives) drive ``step`` directly; BPTT calls ``forward``. Cells with a fused kernel
    (cuDNN / oneDNN) override ``forward`` but keep ``step`` for those algorithms.
    """

    state_names: tuple[str, ...] = ("h",)

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size

    # --- interface -------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, like: Tensor) -> State:
        return tuple(like.new_zeros(batch_size, self.hidden_size) for _ in self.state_names)

    def project_inputs(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def prepare(self) -> Any:
        return None

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        raise NotImplementedError

    def output(self, state: State) -> Tensor:
        return state[0]

    def recurrent_weight_names(self) -> list[str]:
        """Names (relative to the cell) of the recurrent matrices that weight drop (``model.dropout.weight``,
        DropConnect) masks. Default: none, and weight drop refuses the cell."""
        return []

    def redundant_parameters(self) -> int:
        """Stored entries that are not free parameters (e.g. a second bias vector per gate, or the lower triangle
        of a full matrix used only through W - W^T). ``params_free = numel - redundant``."""
        return 0

    # --- runner ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        """x: (T, B, m). Returns (outputs, final state); outputs is (T, B, n) or, without return_sequence, (B, n)."""
        if state is None:
            state = self.init_state(x.shape[1], x)
        gx = self.project_inputs(x)
        ctx = self.prepare()
        outputs = []
        for gx_t in gx.unbind(0):
            state = self.step(gx_t, state, ctx)
            if return_sequence:
                outputs.append(self.output(state))
        if return_sequence:
            return torch.stack(outputs, 0), state
        return self.output(state), state


def init_uniform_fan(weight: Tensor, hidden_size: int) -> None:
    bound = hidden_size**-0.5
    nn.init.uniform_(weight, -bound, bound)


class KroneckerStep(NamedTuple):
    """One step of a Kronecker-structured cell, h_t = g(z_t, h_{t-1}) with z_t = h_hat_t W."""

    h: Tensor  # (B, n) the new state
    h_hat: Tensor  # (B, a) [x_t, h_{t-1}, 1], a = m + n + 1
    D: Tensor  # (B, n, K) dh_t/dz_t: the immediate influence is F_t = h_hat_t (x) D_t
    H: Tensor  # (B, n, n) dh_t/dh_{t-1}, the total one-step state Jacobian


class KroneckerCell:
    """Mixin for cells whose parameters enter only through z_t = [x_t, h_{t-1}, 1] W, W of shape (a, K), with a
    single state vector h (online_rtrl spec R5). UORO, KF-RTRL, OK and the fast exact RTRL use this form:
    ``kron_step`` gives the factors of one step, ``kron_add_grad`` maps a gradient with respect to W (a, K) onto the
    cell's own parameters (adding to ``.grad``)."""

    def kron_width(self) -> int:
        raise NotImplementedError

    def kron_step(self, x: Tensor, h: Tensor) -> KroneckerStep:
        raise NotImplementedError

    def kron_add_grad(self, grad_w: Tensor) -> None:
        raise NotImplementedError


def add_grad(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)
