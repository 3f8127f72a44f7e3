"""AntisymmetricRNN (Chang et al., ICLR 2019), Eq. 12 and the gated Eq. 13.

    M   = W - W^T - gamma I                      (eigenvalues have real part exactly -gamma)
    h_t = h_{t-1} + eps * tanh(M h_{t-1} + V_h x_t + b_h)                                (Eq. 12)
    z_t = sigmoid(M h_{t-1} + V_z x_t + b_z);  h_t = h_{t-1} + eps * z_t * tanh(M h_{t-1} + V_h x_t + b_h)  (Eq. 13)

With ``param="triu"`` only the n(n-1)/2 strictly-upper-triangular entries of W are stored, the paper's parameter-
efficient form. Rows are batch samples here, so the runner multiplies by M^T = -(W - W^T) - gamma I.

``impl="fused"`` (default) runs the whole sequence in :class:`AntisymSequence`, an autograd Function with a
hand-written backward; ``impl="native"`` runs the same Function's forward and backward in one C++ call each
(rnnrepro/native/antisym.cpp, the batch split across threads); ``impl="cell"`` runs the shared step-by-step runner.
All three compute the same function and gradients (tests/test_antisymmetric.py, tests/test_native.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rnnrepro import native
from rnnrepro.cells.base import NativeCellImpl, RecurrentCell, State
from rnnrepro.models import ModelConfig
from rnnrepro.schema import positive, register_schema, require


# ------------------------------------------------------------------------------------------------- config schema
class AntisymParam(str, Enum):
    triu = "triu"
    full = "full"


class AntisymInitOn(str, Enum):
    antisym = "antisym"
    free_W = "free_W"


class InitScale(str, Enum):
    variance = "variance"
    std_bug = "std_bug"


@register_schema("model", "antisym")
@dataclass
class AntisymConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.antisymmetric.AntisymmetricRNN"
    name: str = "antisym"
    impl: NativeCellImpl = NativeCellImpl.fused  # fused: whole-sequence Function | native: its C++ kernel | cell
    eps: float = 0.01
    gamma: float = 0.01
    sigma_w: float = 1.0
    gated: bool = False
    param: AntisymParam = AntisymParam.triu
    init_on: AntisymInitOn = AntisymInitOn.antisym
    init_scale: InitScale = InitScale.variance
    gate_bias_init: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.eps, "model.eps")
        require(self.gamma > 0, "model.gamma", f"must be > 0, got {self.gamma} (gamma = 0 diverges under forward "
                 "Euler, Proposition 2; the paper's grid is 0.001..1, e.g. model.gamma=0.01)")
        require(self.sigma_w >= 0, "model.sigma_w", f"must be >= 0, got {self.sigma_w}")


# ------------------------------------------------------------------------------------------------- fused sequence
def _antisym_forward(gx: Tensor, mt: Tensor, h0: Tensor, eps: float, gated: bool, keep_seq: bool,
                     save: bool) -> dict[str, Tensor | None]:
    """The T steps without autograd. Returns the states ``hs`` (T+1, B, n) (two ping-pong buffers when neither the
    sequence nor backward needs them) and, when ``save``, the candidates c_t = tanh(.) and gates z_t (T, B, n)."""
    T, B, n = gx.shape[0], gx.shape[1], h0.shape[1]
    full = keep_seq or save
    hs = gx.new_empty((T + 1 if full else 2, B, n))
    hs[0].copy_(h0)
    cs = gx.new_empty((T, B, n)) if save else None
    zs = gx.new_empty((T, B, n)) if save and gated else None
    for t in range(T):
        i, j = (t, t + 1) if full else (t & 1, (t + 1) & 1)
        h = hs[i]
        if not gated:
            pre = torch.addmm(gx[t], h, mt)
            c = torch.tanh(pre, out=cs[t] if save else pre)
            torch.add(h, c, alpha=eps, out=hs[j])
        else:
            # one product feeds the candidate and the gate; the element-wise ops stay on contiguous (B, n) tensors
            # (tanh of a strided view is several times slower)
            shared = torch.mm(h, mt)
            c = torch.add(shared, gx[t, :, :n])
            c = torch.tanh(c, out=cs[t] if save else c)
            z = shared.add_(gx[t, :, n:])
            z = torch.sigmoid(z, out=zs[t] if save else z)
            torch.addcmul(h, z, c, value=eps, out=hs[j])
    return {"hs": hs, "cs": cs, "zs": zs, "h_last": hs[T if full else T & 1]}


class AntisymSequence(torch.autograd.Function):
    """All T steps of the (gated) AntisymmetricRNN, forward without autograd, backward written by hand.

    Inputs: the projected inputs gx (T, B, n) or, gated, (T, B, 2n) = [g_h, g_z]; Mt = M^T (n, n) as prepare()
    builds it (normal autograd carries dMt on to w_triu / w_full); h0. Outputs: [h_1..h_T (T, B, n) when
    return_sequence] and h_T.

    Backward in row-vector form, with the scaled adjoint mu = eps dh' of the step's output (dividing by eps once at
    the end instead of multiplying every step):

        Eq. 12: h' = h + eps c, c = tanh(h Mt + g_h):   P = mu (1 - c^2) = d g_h
        Eq. 13: h' = h + eps z c, z = sigmoid(h Mt + g_z):
                P_h = mu z (1 - c^2) = d g_h,  P_z = mu c z (1 - z) = d g_z

    and dh = dh' + (P_h + P_z) Mt^T, i.e. mu_prev = mu + eps (P_h + P_z) Mt^T: one (B, n) x (n, n) product per step
    and no weight gradient. The P_h + P_z are stacked and dMt = sum_t h_t^T (P_h + P_z)_t is one (n x TB) @ (TB x n)
    product at the end.
    """

    @staticmethod
    def forward(ctx: Any, gx: Tensor, mt: Tensor, h0: Tensor, eps: float, gated: bool,
                return_sequence: bool, kernel: Any = None) -> tuple[Tensor, ...]:
        """``kernel``: the compiled rnnrepro/native/antisym.cpp module (impl=native), or None for the torch loop."""
        ctx.set_materialize_grads(False)
        if kernel is not None:
            hs, cs, zs = kernel.antisym_forward(gx.contiguous(), mt.contiguous(), h0.contiguous(), eps, gated)
            run = {"hs": hs, "cs": cs, "zs": zs if gated else None, "h_last": hs[-1]}
        else:
            run = _antisym_forward(gx, mt, h0, eps, gated, keep_seq=return_sequence, save=True)
        ctx.save_for_backward(mt, run["hs"], run["cs"], run["zs"])
        ctx.config = (eps, gated, return_sequence, kernel)
        if return_sequence:
            return run["hs"][1:], run["h_last"].clone()
        return (run["h_last"].clone(),)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        mt, hs, cs, zs = ctx.saved_tensors
        eps, gated, return_sequence, kernel = ctx.config
        if kernel is not None:
            empty = hs.new_empty(0)
            g_seq = grads[0] if return_sequence and grads[0] is not None else empty
            g_h = grads[-1] if grads[-1] is not None else empty
            d_gx, d_mt, d_h0 = kernel.antisym_backward(g_seq.contiguous(), g_h.contiguous(), mt, hs, cs,
                                                       empty if zs is None else zs, eps, gated,
                                                       ctx.needs_input_grad[1])
            return d_gx, d_mt if ctx.needs_input_grad[1] else None, d_h0, None, None, None, None
        T, B, n = cs.shape
        g_seq = grads[0] if return_sequence else None
        g_h = grads[-1]
        mu = hs.new_zeros(B, n) if g_h is None else g_h * eps
        if g_seq is not None:
            mu.add_(g_seq[T - 1], alpha=eps)
        d_gx = hs.new_empty(T, B, 2 * n if gated else n)
        p_sum = hs.new_empty(T, B, n) if gated else d_gx  # P_h + P_z, the adjoint of h Mt
        back = mt.t().contiguous()
        for t in range(T - 1, -1, -1):
            c = cs[t]
            if not gated:
                p = torch.addcmul(mu, mu * c, c, value=-1.0, out=d_gx[t])  # mu (1 - c^2)
            else:
                z = zs[t]
                pv = d_gx[t].view(B, 2, n)
                mz = mu * z
                mzc = mz * c
                p_h = torch.addcmul(mz, mzc, c, value=-1.0, out=pv[:, 0])  # mu z (1 - c^2)
                p_z = torch.addcmul(mzc, mzc, z, value=-1.0, out=pv[:, 1])  # mu c z (1 - z)
                p = torch.add(p_h, p_z, out=p_sum[t])
            mu = torch.addmm(mu, p, back, alpha=eps)
            if g_seq is not None and t > 0:
                mu.add_(g_seq[t - 1], alpha=eps)
        d_mt = None
        if ctx.needs_input_grad[1]:
            d_mt = torch.mm(hs[:T].reshape(T * B, n).t(), p_sum.view(T * B, n))
        return d_gx, d_mt, mu.div_(eps), None, None, None, None


class AntisymmetricRNN(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, eps: float = 0.01, gamma: float = 0.01,
                 sigma_w: float = 1.0, gated: bool = False, param: str = "triu", init_on: str = "antisym",
                 init_scale: str = "variance", gate_bias_init: float = 0.0, impl: str = "fused") -> None:
        super().__init__(input_size, hidden_size)
        self.eps, self.gamma, self.gated = float(eps), float(gamma), bool(gated)
        self.param = str(getattr(param, "value", param))
        self.impl = str(getattr(impl, "value", impl))
        if self.impl not in ("fused", "cell", "native"):
            raise ValueError(f"model.impl must be fused, native or cell, got {impl!r}")
        # native: built (or read from the cache) here, before any training; None falls back to fused
        if self.impl == "native" and native.load("antisym") is None:
            self.impl = "fused"
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

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        """impl=fused: the whole sequence in AntisymSequence. The shared step-by-step runner for impl=cell, an empty
        sequence, the degenerate eps = 0 (the backward divides by eps) and under autocast (the Function writes into
        preallocated buffers of the input dtype)."""
        if self.impl == "cell" or x.shape[0] == 0 or self.eps == 0 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x, state, return_sequence)
        if state is None:
            state = self.init_state(x.shape[1], x)
        gx = self.project_inputs(x)
        mt = self.prepare()
        h0 = state[0]
        # the kernel is CPU code: on a GPU, impl=native runs the fused torch loop
        kernel = native.load("antisym") if self.impl == "native" and x.device.type == "cpu" else None
        if torch.is_grad_enabled() and any(t.requires_grad for t in (gx, mt, h0)):
            outs = AntisymSequence.apply(gx, mt, h0, self.eps, self.gated, return_sequence, kernel)
        elif kernel is not None:
            with torch.no_grad():
                hs = kernel.antisym_forward(gx.contiguous(), mt, h0.contiguous(), self.eps, self.gated)[0]
            outs = (hs[1:], hs[-1]) if return_sequence else (hs[-1],)
        else:
            with torch.no_grad():
                run = _antisym_forward(gx, mt, h0, self.eps, self.gated, keep_seq=return_sequence, save=False)
            outs = (run["hs"][1:], run["h_last"]) if return_sequence else (run["h_last"],)
        return outs[0], (outs[-1],)

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
