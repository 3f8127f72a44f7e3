"""Baselines: tanh RNN, iRNN, GRU and LSTM.

Each cell owns a one-layer ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` for its parameters. ``impl="fused"`` runs that
module (cuDNN on GPU, oneDNN on CPU); ``impl="cell"`` runs the same parameters through the shared step-by-step
runner, which is what variants of these cells and the online training algorithms build on. Both paths compute the
same function (tests/test_cells.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrepro.cells.base import CellImpl, KroneckerCell, KroneckerStep, RecurrentCell, State, add_grad
from rnnrepro.cells.stable import (
    StableLSTMConfig,
    StableRNNConfig,
    clip_singular_values_,
    normalise_l1_,
    normalise_spectral_,
)
from rnnrepro.models import ModelConfig
from rnnrepro.schema import register_schema


# ------------------------------------------------------------------------------------------------- config schema
class CellInit(str, Enum):
    default = "default"  # torch's nn.RNN / nn.GRU / nn.LSTM init, U(-1/sqrt(n), 1/sqrt(n))
    uniform = "uniform"  # weights U(-model.init_range, model.init_range), biases 0 (TF BasicLSTMCell)
    # input weights N(0, 1/m) (variance 1/m, m the layer's input size), biases 0, recurrent weights torch's: the
    # AntisymmetricRNN paper's LSTM baseline [quote], with its forget bias 1 from model.forget_bias
    normal_input = "normal_input"


@register_schema("model", "rnn")
@dataclass
class RNNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.TanhRNN"
    name: str = "rnn"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default
    # millerjohnp/TCN sets entries [n/4, n/2) of both bias vectors to 10 for every cell type (for its LSTM that is
    # the forget gate; for the RNN a quarter of the units start saturated) [code]; null: keep model.init's biases
    bias_slice_init: float | None = None
    stable: StableRNNConfig = field(default_factory=StableRNNConfig)  # Stable Recurrent Models projection (S6)


@register_schema("model", "irnn")
@dataclass
class IRNNConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.IRNN"
    name: str = "irnn"
    impl: CellImpl = CellImpl.fused
    identity_scale: float = 1.0


@register_schema("model", "gru")
@dataclass
class GRUConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.GRU"
    name: str = "gru"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default


@register_schema("model", "lstm")
@dataclass
class LSTMConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.classic.LSTM"
    name: str = "lstm"
    impl: CellImpl = CellImpl.fused
    init: CellInit = CellInit.default
    forget_bias: float | None = 1.0  # null: keep the init of model.init (torch: U(-1/sqrt(n), 1/sqrt(n)))
    stable: StableLSTMConfig = field(default_factory=StableLSTMConfig)  # Stable Recurrent Models normalisation (S7)
    # false reproduces the Stable Recurrent Models JSB code's bug: its LSTM reads (1, T, 88) as T sequences of one
    # step, so every frame starts from the zero state (spec section 7 item 5, flag jsb.lstm_recurrent); the same as
    # model.truncation=1
    lstm_recurrent: bool = True


class _FusedCell(RecurrentCell):
    """A torch recurrent module (``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM``) of ``num_layers`` layers behind the cell
    interface. ``impl="fused"`` calls the module (one multi-layer oneDNN / cuDNN call, ``dropout_between`` applied by
    torch between layers in training); ``impl="cell"`` runs the same per-layer weights through the shared runner,
    layer after layer, with the same dropout. The state holds every layer's components, layer 0 first; the output is
    the last layer's h. ``project_inputs`` / ``step`` (the online algorithms' interface) are layer 0's."""

    native_layers = True  # build_model passes num_layers and dropout_between instead of stacking cells

    def __init__(self, input_size: int, hidden_size: int, module: nn.RNNBase, impl: str = "fused",
                 init: str = "default", init_range: float = 0.1) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = module
        self.num_layers = module.num_layers
        self.dropout_between = float(module.dropout)
        self.impl = str(getattr(impl, "value", impl))
        if self.impl not in ("fused", "cell"):
            raise ValueError(f"model.impl must be fused or cell, got {impl!r}")
        self.layer_state_names = self.state_names
        self.state_names = self.state_names * self.num_layers
        init = str(getattr(init, "value", init))
        if init == "uniform":  # every weight U(-r, r), biases 0 (TF BasicLSTMCell; the TF PTB tutorial's init_scale)
            with torch.no_grad():
                for name, param in self.rnn.named_parameters():
                    param.uniform_(-init_range, init_range) if name.startswith("weight") else param.zero_()
        elif init == "normal_input":
            with torch.no_grad():
                for name, param in self.rnn.named_parameters():
                    if name.startswith("weight_ih"):
                        param.normal_(0.0, 1.0 / math.sqrt(param.shape[1]))
                    elif name.startswith("bias"):
                        param.zero_()
        elif init != "default":
            raise ValueError(f"model.init must be default, uniform or normal_input, got {init!r}")

    def weight(self, kind: str, layer: int = 0) -> Tensor:
        return getattr(self.rnn, f"{kind}_l{layer}")

    @property
    def w_ih(self) -> Tensor:
        return self.rnn.weight_ih_l0

    @property
    def w_hh(self) -> Tensor:
        return self.rnn.weight_hh_l0

    def recurrent_weight_names(self) -> list[str]:
        """Parameters that weight drop (DropConnect, ``model.dropout.weight``) masks: the hidden-to-hidden ones."""
        return [f"rnn.weight_hh_l{k}" for k in range(self.num_layers)]

    def project_inputs(self, x: Tensor) -> Tensor:
        return self.project_layer(x, 0)

    def step(self, gx: Tensor, state: State, ctx: Any) -> State:
        return self.step_layer(gx, state, 0)

    def project_layer(self, x: Tensor, layer: int) -> Tensor:
        raise NotImplementedError

    def step_layer(self, gx: Tensor, state: State, layer: int) -> State:
        raise NotImplementedError

    def output(self, state: State) -> Tensor:
        return state[-len(self.layer_state_names)]

    def _hx(self, state: State) -> Any:
        k = len(self.layer_state_names)
        parts = [torch.stack(state[i::k], 0) for i in range(k)]  # (L, B, n) per component
        return parts[0] if k == 1 else tuple(parts)

    def _state_from(self, hn: Any) -> State:
        parts = (hn,) if torch.is_tensor(hn) else tuple(hn)
        return tuple(p[layer] for layer in range(self.num_layers) for p in parts)

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        if self.impl == "cell":
            if self.num_layers == 1:  # the shared runner itself
                return super().forward(x, state, return_sequence)
            return self._forward_layers(x, state, return_sequence)
        out, hn = self.rnn(x, None if state is None else self._hx(state))
        return (out if return_sequence else out[-1]), self._state_from(hn)

    def _forward_layers(self, x: Tensor, state: State | None, return_sequence: bool) -> tuple[Tensor, State]:
        k = len(self.layer_state_names)
        if state is None:
            state = self.init_state(x.shape[1], x)
        final: list[Tensor] = []
        seq = x
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout_between > 0:
                seq = F.dropout(seq, self.dropout_between, self.training)
            s = tuple(state[layer * k : (layer + 1) * k])
            outputs = []
            for gx_t in self.project_layer(seq, layer).unbind(0):
                s = self.step_layer(gx_t, s, layer)
                outputs.append(s[0])
            seq = torch.stack(outputs, 0)
            final.extend(s)
        return (seq if return_sequence else seq[-1]), tuple(final)


def _module_kwargs(num_layers: int, dropout_between: float) -> dict:
    return {"num_layers": int(num_layers), "dropout": float(dropout_between) if num_layers > 1 else 0.0}


class TanhRNN(_FusedCell, KroneckerCell):
    """h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh). Kronecker form (one layer): W = [W_ih^T; W_hh^T;
    (b_ih + b_hh)^T], K = n, D_t = diag(phi'(z_t)), H_t = D_t W_hh."""

    nonlinearity = "tanh"

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", num_layers: int = 1,
                 dropout_between: float = 0.0, init: str = "default", init_range: float = 0.1,
                 bias_slice_init: float | None = None, stable: dict | None = None) -> None:
        module = nn.RNN(input_size, hidden_size, nonlinearity=self.nonlinearity,
                        **_module_kwargs(num_layers, dropout_between))
        super().__init__(input_size, hidden_size, module, impl, init, init_range)
        if bias_slice_init is not None:
            n = hidden_size
            with torch.no_grad():
                for layer in range(self.num_layers):
                    self.weight("bias_ih", layer)[n // 4 : n // 2].fill_(bias_slice_init)
                    self.weight("bias_hh", layer)[n // 4 : n // 2].fill_(bias_slice_init)
        self.stable = dict(stable or {})
        if self.stable.get("enabled") and self.stable.get("method", "svd") == "power_iter":
            # one right singular vector estimate per layer, carried from step to step (and saved with the weights)
            start = torch.randn(self.num_layers, hidden_size, generator=torch.Generator().manual_seed(0))
            self.register_buffer("_power_v", start / start.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Spectral projection of every layer's W_hh (spec S6), in place."""
        if not self.stable.get("enabled"):
            return
        max_sv = float(self.stable.get("max_sv", 1.0))
        for layer in range(self.num_layers):
            weight = self.weight("weight_hh", layer)
            if self.stable.get("method", "svd") == "power_iter":
                normalise_spectral_(weight, self._power_v[layer], max_sv, int(self.stable.get("power_iterations", 1)))
            else:
                clip_singular_values_(weight, max_sv)

    def project_layer(self, x: Tensor, layer: int) -> Tensor:
        return F.linear(x, self.weight("weight_ih", layer),
                        self.weight("bias_ih", layer) + self.weight("bias_hh", layer))

    def step_layer(self, gx: Tensor, state: State, layer: int) -> State:
        pre = torch.addmm(gx, state[0], self.weight("weight_hh", layer).t())
        return (torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre),)

    def redundant_parameters(self) -> int:
        return self.hidden_size * self.num_layers  # only b_ih + b_hh matters

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
    """iRNN (Le, Jaitly, Hinton 2015): ReLU RNN with W_hh = identity_scale * I and zero biases at init (every
    layer)."""

    nonlinearity = "relu"

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", identity_scale: float = 1.0,
                 num_layers: int = 1, dropout_between: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, impl, num_layers, dropout_between)
        with torch.no_grad():
            for layer in range(self.num_layers):
                self.weight("weight_hh", layer).copy_(identity_scale * torch.eye(hidden_size))
                self.weight("bias_ih", layer).zero_()
                self.weight("bias_hh", layer).zero_()


class GRU(_FusedCell):
    """PyTorch's GRU: r, z gates; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) n + z h."""

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", num_layers: int = 1,
                 dropout_between: float = 0.0, init: str = "default", init_range: float = 0.1) -> None:
        module = nn.GRU(input_size, hidden_size, **_module_kwargs(num_layers, dropout_between))
        super().__init__(input_size, hidden_size, module, impl, init, init_range)

    def project_layer(self, x: Tensor, layer: int) -> Tensor:
        return F.linear(x, self.weight("weight_ih", layer), self.weight("bias_ih", layer))

    def step_layer(self, gx: Tensor, state: State, layer: int) -> State:
        h = state[0]
        gh = torch.addmm(self.weight("bias_hh", layer), h, self.weight("weight_hh", layer).t())
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (n + z * (h - n),)

    def redundant_parameters(self) -> int:
        return 2 * self.hidden_size * self.num_layers  # b_ir + b_hr and b_iz + b_hz; b_hn is inside r * (...)


class LSTM(_FusedCell):
    """PyTorch's LSTM (gate order i, f, g, o); state (h, c) per layer; forget-gate bias initialised to
    ``forget_bias`` in every layer (after ``init``; ``None`` keeps the init's forget-gate biases)."""

    state_names = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, impl: str = "fused", forget_bias: float | None = 1.0,
                 num_layers: int = 1, dropout_between: float = 0.0, init: str = "default",
                 init_range: float = 0.1, stable: dict | None = None) -> None:
        module = nn.LSTM(input_size, hidden_size, **_module_kwargs(num_layers, dropout_between))
        super().__init__(input_size, hidden_size, module, impl, init, init_range)
        n = hidden_size
        if forget_bias is not None:
            with torch.no_grad():
                for layer in range(self.num_layers):
                    self.weight("bias_ih", layer)[n : 2 * n].fill_(forget_bias)
                    self.weight("bias_hh", layer)[n : 2 * n].zero_()
        self.stable = dict(stable or {})
        self.stable.setdefault("constants", {})

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """l1 normalisation of the gate blocks of every layer's W_hh and of the forget block of W_ih (spec S7)."""
        if not self.stable.get("enabled"):
            return
        n = self.hidden_size
        axis, mode = str(self.stable.get("norm_axis", "rows")), str(self.stable.get("norm_mode", "rescale"))
        c = {"i": 0.395, "f": 0.155, "z": 0.099, "o": 0.395, "u_f": 0.25, **self.stable["constants"]}
        for layer in range(self.num_layers):
            w_hh = self.weight("weight_hh", layer)
            for k, gate in enumerate(("i", "f", "z", "o")):  # torch's gate order; the code calls g "z"
                normalise_l1_(w_hh[k * n : (k + 1) * n], float(c[gate]), axis, mode)
            normalise_l1_(self.weight("weight_ih", layer)[n : 2 * n], float(c["u_f"]), axis, mode)
            if self.stable.get("constrain_forget_bias"):
                self.weight("bias_ih", layer)[n : 2 * n].clamp_(max=0.0)
                self.weight("bias_hh", layer)[n : 2 * n].clamp_(max=0.0)

    def project_layer(self, x: Tensor, layer: int) -> Tensor:
        return F.linear(x, self.weight("weight_ih", layer),
                        self.weight("bias_ih", layer) + self.weight("bias_hh", layer))

    def step_layer(self, gx: Tensor, state: State, layer: int) -> State:
        h, c = state
        i, f, g, o = torch.addmm(gx, h, self.weight("weight_hh", layer).t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def redundant_parameters(self) -> int:
        return 4 * self.hidden_size * self.num_layers  # one bias vector per gate is free
