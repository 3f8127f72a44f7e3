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

``impl="fused"`` (default) runs the whole sequence in :class:`SBOSequence`, an autograd Function with a hand-written
backward (derivation in its docstring); ``impl="cell"`` (and ``grad_impl="dense_diag"``) runs the shared step-by-step
runner, whose autograd graph records every step. Both compute the same function and gradients (tests/test_sbo.py).
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

from rnnrepro.cells.base import CellImpl, RecurrentCell, State
from rnnrepro.models import ModelConfig
from rnnrepro.schema import positive, register_schema, require


# ------------------------------------------------------------------------------------------------- config schema
class SBOSolver(str, Enum):
    sgd = "sgd"
    shb = "shb"
    snag = "snag"


class SBORecurrent(str, Enum):
    dense_lowrank = "dense_lowrank"
    sparse = "sparse"
    full = "full"
    diagonal = "diagonal"


class SBOGradImpl(str, Enum):
    elementwise = "elementwise"
    dense_diag = "dense_diag"


# The official code's bug is a never-trained dense U = I + P Q; it trains the sparse w (spec section 7 item 1).
TRAIN_RECURRENT_ONLY_DENSE = ("false (the official code's untrained U = I + P Q) applies to "
                              "model.recurrent=dense_lowrank only: the official code trains the sparse w, and full / "
                              "diagonal have no code counterpart. Drop model.train_recurrent=false or set "
                              "model.recurrent=dense_lowrank")


@register_schema("model", "sbo")
@dataclass
class SBOConfig(ModelConfig):
    _target_: str = "rnnrepro.cells.sbo.SBORNN"
    name: str = "sbo"
    impl: CellImpl = CellImpl.fused  # fused: whole-sequence Function, hand-written backward | cell: shared runner
    solver: SBOSolver = SBOSolver.sgd
    recurrent: SBORecurrent = SBORecurrent.dense_lowrank
    rank: int = 50
    eta: float = 1e-3
    mu: float = 0.5
    learn_mu: bool = True
    alpha: float = 1.0
    train_recurrent: bool = True
    grad_impl: SBOGradImpl = SBOGradImpl.elementwise

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self.eta, "model.eta")
        positive(self.alpha, "model.alpha")
        require(self.rank >= 1, "model.rank", f"must be >= 1, got {self.rank}")
        require(self.train_recurrent or self.recurrent == SBORecurrent.dense_lowrank, "model.train_recurrent",
                TRAIN_RECURRENT_ONLY_DENSE)


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


# ------------------------------------------------------------------------------------------------- fused sequence
def _recurrent_ops(u: Tensor) -> tuple[Any, Any, Any]:
    """U acting on row vectors, for a matrix U (n x n), a diagonal (n,) or a scalar (0-dim) u:

    - ``pre(gx_t, h)``                = gx_t + h U^T   (the ReLU pre-activation)
    - ``times_t(x)``                  = x U^T
    - ``add_times(base, x, c, out)``  = base + c x U
    """
    if u.dim() == 2:
        ut = u.t().contiguous()
        return ((lambda gx_t, h: torch.addmm(gx_t, h, ut)),
                (lambda x: torch.mm(x, ut)),
                (lambda base, x, c, out=None: torch.addmm(base, x, u, alpha=c, out=out)))
    if u.dim() == 1:
        return ((lambda gx_t, h: torch.addcmul(gx_t, h, u)),
                (lambda x: x * u),
                (lambda base, x, c, out=None: torch.addcmul(base, x, u, value=c, out=out)))
    w = float(u)
    return ((lambda gx_t, h: torch.add(gx_t, h, alpha=w)),
            (lambda x: x * w),
            (lambda base, x, c, out=None: torch.add(base, x, alpha=c * w, out=out)))


def _sbo_forward(gx: Tensor, u: Tensor, mu: float, h0: Tensor, m0: Tensor | None, solver: str, alpha: float,
                 eta: float, keep_seq: bool, save: bool, save_momentum: bool, save_dne: bool
                 ) -> dict[str, Tensor | None]:
    """The T solver steps without autograd.

    Returns the states ``hs`` (T+1, B, n) (two ping-pong buffers when neither the sequence nor backward needs them),
    the momentum states ``ms`` (v for shb, y for snag; all T+1 when ``save_momentum``), ``h_last`` / ``m_last``, and
    the stacked (T, B, n) masks D_t (when ``save``) and D_t (phi_t - alpha h_t) (when ``save_dne``).
    """
    T, B, n = gx.shape
    full = keep_seq or save
    hs = gx.new_empty((T + 1 if full else 2, B, n))
    hs[0].copy_(h0)
    ms = None
    if solver != "sgd":
        ms = gx.new_empty((T + 1 if save_momentum else 2, B, n))
        ms[0].copy_(m0)
    masks = gx.new_empty((T, B, n)) if save else None
    dnes = gx.new_empty((T, B, n)) if save_dne else None
    pre, _, add_times = _recurrent_ops(u)
    scale = eta * alpha
    for t in range(T):
        i, j = (t, t + 1) if full else (t & 1, (t + 1) & 1)
        h = hs[i]
        phi = pre(gx[t], h).relu_()
        ne = torch.sub(phi, h, alpha=alpha)  # phi - alpha h = -e
        mask = torch.sign(phi, out=None if masks is None else masks[t])  # D = 1[phi > 0]
        dne = torch.mul(ne, mask, out=None if dnes is None else dnes[t])  # -D e
        # s = -eta grad f_t = -eta (alpha e - (D e) U) = eta alpha ne - eta (D ne) U. Every solver adds the same s,
        # so with mu = 0 SHB and SNAG reproduce SGD bit for bit.
        if u.dim() == 2:
            s = torch.addmm(ne, dne, u, beta=scale, alpha=-eta)
        else:
            s = add_times(ne.mul_(scale), dne, -eta)
        if solver == "sgd":
            torch.add(h, s, out=hs[j])
            continue
        k, kn = (t, t + 1) if save_momentum else (t & 1, (t + 1) & 1)
        if solver == "shb":
            v = torch.add(s, ms[k], alpha=mu, out=ms[kn])  # v_t = mu v_{t-1} - eta grad
            torch.add(h, v, out=hs[j])  # h_t = h_{t-1} + v_t
        else:
            y = torch.add(h, s, out=ms[kn])  # y_t = h_{t-1} - eta grad
            torch.lerp(y, ms[k], -mu, out=hs[j])  # h_t = y_t + mu (y_t - y_{t-1})
    last_m = None if ms is None else ms[T if save_momentum else T & 1]
    return {"hs": hs, "ms": ms, "masks": masks, "dnes": dnes, "h_last": hs[T if full else T & 1], "m_last": last_m}


class SBOSequence(torch.autograd.Function):
    """All T steps of an SBO-RNN, forward without autograd, backward written by hand.

    Inputs: the projected inputs gx (T, B, n) (W x_t + b, projected outside with normal autograd), u (the recurrent
    matrix U (n, n) as prepare() builds it, or the diagonal d (n,), or the scalar w ()), mu (0-dim), the initial state
    h0 and, for shb / snag, m0 (v_0 or y_0); then solver, alpha (!= 0), eta, return_sequence. Outputs: [h_1..h_T
    (T, B, n) when return_sequence], h_T and, for shb / snag, v_T / y_T.

    Backward, in row-vector form. One step computes, with a = gx_t + h U^T, phi = relu(a), D = 1[phi > 0] (a
    constant), e = alpha h - phi:

        s = -eta grad f_t(h) = -eta (alpha e - (D e) U)

    Given the adjoint S of s, let q = S U^T, V = S - D q / alpha and A = D V. Then

        d gx_t = d a = eta alpha A
        d h    = eta alpha A U - eta alpha^2 V                 (through a inside phi, and through e)
        d U    = eta (alpha A^T h - (D (phi - alpha h))^T S)   (through a, and through (D e) U)

    The solvers add s to the states: sgd h' = h + s, so S = dh' and dh = dh' + d h. shb v' = mu v + s, h' = h + v',
    so S = dv' + dh', dv = mu S (hence S_{t-1} = dh'_{t-1} + mu S_t), dh = dh' + d h and dmu = sum_t <S_t, v_{t-1}>.
    snag y' = h + s, h' = (1 + mu) y' - mu y, so S = dy' + (1 + mu) dh' with dy' = -mu dh'_{t+1}, dh = S + d h and
    dmu = sum_t <dh'_t, y_t - y_{t-1}>.

    The loop over t = T-1..0 carries only the state adjoints: two (B, n) x (n, n) products and a few element-wise
    operations per step, no weight gradient. The A_t and S_t are stacked as (T, B, n), and dU is two
    (n x TB) @ (TB x n) products at the end (normal autograd then maps dU through prepare(): dP = dU Q^T,
    dQ = P^T dU for U = I + P Q); dmu is two dot products of stacked tensors.
    """

    @staticmethod
    def forward(ctx: Any, gx: Tensor, u: Tensor, mu: Tensor, h0: Tensor, m0: Tensor | None, solver: str,
                alpha: float, eta: float, return_sequence: bool) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        mu_f = float(mu)
        save_momentum = solver != "sgd" and ctx.needs_input_grad[2]
        run = _sbo_forward(gx, u, mu_f, h0, m0, solver, alpha, eta, keep_seq=return_sequence, save=True,
                           save_momentum=save_momentum, save_dne=ctx.needs_input_grad[1])
        ctx.save_for_backward(u, run["hs"], run["ms"], run["masks"], run["dnes"])
        ctx.config = (solver, alpha, eta, mu_f, mu.dtype, return_sequence, save_momentum)
        outs = [run["hs"][1:]] if return_sequence else []
        outs.append(run["h_last"].clone())
        if solver != "sgd":
            outs.append(run["m_last"].clone())
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        u, hs, ms, masks, dnes = ctx.saved_tensors
        solver, alpha, eta, mu, mu_dtype, return_sequence, save_momentum = ctx.config
        T, B, n = masks.shape
        g_seq = grads[0] if return_sequence else None
        g_h = grads[1 if return_sequence else 0]
        g_m = grads[-1] if solver != "sgd" else None
        _, times_t, add_times = _recurrent_ops(u)
        s_buf = hs.new_empty(T, B, n)  # S_t, the adjoint of s_t (for sgd also dh'_t)
        a_buf = hs.new_empty(T, B, n)  # A_t; eta alpha A is d gx
        lh_buf = hs.new_empty(T, B, n) if solver == "snag" and save_momentum else None  # dh'_t, for dmu

        # dh'_{T-1}: the adjoint of h_T, from the final state and the last output of the sequence
        lam_h = s_buf[T - 1] if solver == "sgd" else (lh_buf[T - 1] if lh_buf is not None else hs.new_empty(B, n))
        if g_h is None:
            lam_h.zero_()
        else:
            lam_h.copy_(g_h)
        if g_seq is not None:
            lam_h.add_(g_seq[T - 1])
        lam_next = None  # snag: dh'_{t+1}
        for t in range(T - 1, -1, -1):
            if solver == "sgd":
                S = base = lam_h
            elif solver == "shb":
                if t == T - 1:
                    S = s_buf[t].copy_(lam_h) if g_m is None else torch.add(lam_h, g_m, out=s_buf[t])
                else:
                    S = torch.add(lam_h, s_buf[t + 1], alpha=mu, out=s_buf[t])
                base = lam_h
            else:
                if t == T - 1:
                    S = torch.mul(lam_h, 1.0 + mu, out=s_buf[t])
                    if g_m is not None:
                        S.add_(g_m)
                else:
                    S = torch.lerp(lam_h, lam_next, -mu, out=s_buf[t])  # (1 + mu) dh'_t - mu dh'_{t+1}
                base = S
                lam_next = lam_h
            mask = masks[t]
            V = torch.addcmul(S, mask, times_t(S), value=-1.0 / alpha)  # S - D q / alpha
            A = torch.mul(V, mask, out=a_buf[t])
            V = torch.add(base, V, alpha=-eta * alpha * alpha, out=V)
            dest = None
            if t > 0:
                dest = s_buf[t - 1] if solver == "sgd" else (lh_buf[t - 1] if lh_buf is not None else None)
            lam_h = add_times(V, A, eta * alpha, out=dest)  # dh'_{t-1}
            if g_seq is not None and t > 0:
                lam_h.add_(g_seq[t - 1])
        d_m0 = None
        if solver == "shb":
            d_m0 = s_buf[0] * mu
        elif solver == "snag":
            d_m0 = lam_next * -mu

        need_gx, need_u, need_mu = ctx.needs_input_grad[:3]
        d_u = d_mu = None
        flat = (T * B, n)
        if need_u:
            af, hf, df, sf = a_buf.view(flat), hs[:T].reshape(flat), dnes.view(flat), s_buf.view(flat)
            if u.dim() == 2:
                d_u = torch.mm(af.t(), hf).mul_(alpha).sub_(torch.mm(df.t(), sf))
            elif u.dim() == 1:
                d_u = (af * hf).sum(0).mul_(alpha).sub_((df * sf).sum(0))
            else:
                d_u = alpha * torch.dot(af.flatten(), hf.flatten()) - torch.dot(df.flatten(), sf.flatten())
            d_u = d_u.mul_(eta).to(u.dtype)
        if need_mu and save_momentum:
            if solver == "shb":
                d_mu = torch.dot(s_buf.flatten(), ms[:T].flatten())
            else:
                lh = lh_buf.flatten()
                d_mu = torch.dot(lh, ms[1:].flatten()) - torch.dot(lh, ms[:T].flatten())
            d_mu = d_mu.to(mu_dtype)
        d_gx = a_buf.mul_(eta * alpha) if need_gx else None
        return d_gx, d_u, d_mu, lam_h, d_m0, None, None, None, None


class SBORNN(RecurrentCell):
    def __init__(self, input_size: int, hidden_size: int, solver: str = "sgd", recurrent: str = "dense_lowrank",
                 rank: int = 50, eta: float = 1e-3, mu: float = 0.5, learn_mu: bool = True, alpha: float = 1.0,
                 train_recurrent: bool = True, grad_impl: str = "elementwise", impl: str = "fused") -> None:
        super().__init__(input_size, hidden_size)
        self.solver, self.recurrent, self.grad_impl = _value(solver), _value(recurrent), _value(grad_impl)
        self.impl = _value(impl)
        if self.solver not in ("sgd", "shb", "snag"):
            raise ValueError(f"model.solver must be sgd, shb or snag, got {solver!r}")
        if self.impl not in ("fused", "cell"):
            raise ValueError(f"model.impl must be fused or cell, got {impl!r}")
        self.state_names = ("h",) if self.solver == "sgd" else ("h", "v" if self.solver == "shb" else "y")
        self.eta, self.alpha = float(eta), float(alpha)
        n, m = hidden_size, input_size
        bound = 1.0 / math.sqrt(n)
        self.input = nn.Linear(m, n)
        nn.init.uniform_(self.input.weight, -bound, bound)
        nn.init.uniform_(self.input.bias, -bound, bound)

        # sbo.train_recurrent=false keeps U's factors as buffers: the official code's never-trained U (a bug).
        if not train_recurrent and self.recurrent != "dense_lowrank":
            raise ValueError(f"model.train_recurrent={TRAIN_RECURRENT_ONLY_DENSE}")
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
        if learn_mu and self.solver != "sgd":  # the SGD solver never reads mu: no parameter that gets no gradient
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

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        """impl=fused: the whole sequence in SBOSequence. The shared runner for impl=cell, grad_impl=dense_diag, an
        empty sequence, the degenerate alpha = 0 (SBOSequence's backward divides by alpha) and under autocast (the
        Function writes into preallocated buffers of the input dtype)."""
        if (self.impl == "cell" or self.grad_impl == "dense_diag" or x.shape[0] == 0 or self.alpha == 0
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x, state, return_sequence)
        if state is None:
            state = self.init_state(x.shape[1], x)
        gx = self.project_inputs(x)
        _, u = self.prepare()
        m0 = state[1] if self.solver != "sgd" else None
        tensors = (gx, u, self.mu, state[0], m0)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            outs = SBOSequence.apply(*tensors, self.solver, self.alpha, self.eta, return_sequence)
        else:
            with torch.no_grad():
                run = _sbo_forward(gx, u, float(self.mu), state[0], m0, self.solver, self.alpha, self.eta,
                                   keep_seq=return_sequence, save=False, save_momentum=False, save_dne=False)
            last = (run["h_last"],) if m0 is None else (run["h_last"], run["m_last"])
            outs = ((run["hs"][1:],) if return_sequence else ()) + last
        if return_sequence:
            return outs[0], tuple(outs[1:])
        return outs[0], tuple(outs)

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
