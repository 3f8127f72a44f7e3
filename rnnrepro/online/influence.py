"""Influence-matrix estimators for online training (online_rtrl spec sections 2.1-2.6).

Each estimator carries, per batch row, an estimate of G_t = dh_t/dW for a Kronecker cell (W of shape (a, K); see
``rnnrepro.cells.base.KroneckerCell``), or of dstate_t/dtheta for any cell (``AutogradRTRL``). The interface:

- ``init(batch, like)``: the influence at t = 0 (zero, or the estimator's starting factors);
- ``step(influence, x, state)``: advances state and influence by one time step under the current weights, returns
  (new state tuple, new influence, diagnostics dict);
- ``accumulate(influence, q)``: adds q_t G_t (q_t = dL_t/dh_t, already scaled by the loss's batch mean) into the
  cell parameters' ``.grad``;
- ``zero_rows(influence, rows)``: sets the influence of the given batch rows to zero (sequence starts, resets).

All tensors are batched (einsum / bmm; for OK two small eigendecompositions and one small SVD per row) and live
on the run's device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from rnnrepro.cells.base import KroneckerCell, RecurrentCell, State
from rnnrepro.online.opt import opt_coefficients, rademacher

Influence = tuple[Tensor, ...]


def _zero_rows(tensors: Influence, rows: Tensor) -> Influence:
    return tuple(t.masked_fill(rows.view(-1, *([1] * (t.dim() - 1))), 0) for t in tensors)


class KroneckerEstimator:
    """Base for estimators built on a cell's Kronecker form (h_hat_t, D_t, H_t)."""

    def __init__(self, cell: RecurrentCell) -> None:
        if not isinstance(cell, KroneckerCell):
            raise TypeError(f"{type(cell).__name__} has no Kronecker form (h_hat, D, H); UORO, KF-RTRL and OK need "
                            "one: use model=rhn or model=rnn (or algorithm=rtrl, which works for any cell)")
        self.cell = cell
        self.n, self.K = cell.hidden_size, cell.kron_width()
        self.a = cell.input_size + cell.hidden_size + 1

    def zero_rows(self, influence: Influence, rows: Tensor) -> Influence:
        return _zero_rows(influence, rows)

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        """sum_b q_b G_b as the (a, K) gradient of W."""
        raise NotImplementedError

    def accumulate(self, influence: Influence, q: Tensor) -> None:
        self.cell.kron_add_grad(self.gradient(influence, q))

    def step(self, influence: Influence, x: Tensor, state: State) -> tuple[State, Influence, dict]:
        ks = self.cell.kron_step(x, state[0])
        return (ks.h,), self.propagate(influence, ks.h_hat, ks.D, ks.H), self.diagnostics

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        raise NotImplementedError

    diagnostics: dict = {}


class ExactKronecker(KroneckerEstimator):
    """Exact RTRL with G_t stored as (B, n, a, K): G_t = H_t G_{t-1} + h_hat_t (x) D_t. O(n^2 a K) per step."""

    def init(self, batch: int, like: Tensor) -> Influence:
        return (like.new_zeros(batch, self.n, self.a, self.K),)

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        G = torch.matmul(H, influence[0].flatten(2)).view_as(influence[0])
        return (G.add_(h_hat[:, None, :, None] * D[:, :, None, :]),)

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        return torch.einsum("bi,biak->ak", q, influence[0])


class UORO(KroneckerEstimator):
    """Rank one, G ~ s theta^T with s (B, n), theta (B, a, K) (spec U1-U6). nu^T F_t = h_hat_t (x) (nu^T D_t).

    ``eps_placement``: ``outside`` (spec U2-U3: the vanilla-rtrl JAX code) rho0 = sqrt(|theta| / |H s|) +
    eps, rho1 = sqrt(|nu^T F| / |nu|) + eps, with a zero numerator or denominator read as ratio 0 (the zero
    initial factors: the term it balances is then zero, and rho = eps keeps it finite); ``inside`` rho0 =
    sqrt((|theta| + eps) / (|H s| + eps)), likewise rho1. Unbiased for any rho0 > 0 fixed given the past and any
    rho1 even in nu, which all of these are."""

    def __init__(self, cell: RecurrentCell, eps: float = 1e-7, eps_placement: str = "outside") -> None:
        super().__init__(cell)
        if eps_placement not in ("outside", "inside"):
            raise ValueError(f"eps_placement must be outside or inside, got {eps_placement!r}")
        self.eps, self.eps_placement = eps, eps_placement

    def _rho(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        eps = self.eps
        if self.eps_placement == "inside":
            return ((numerator + eps) / (denominator + eps)).sqrt()
        ok = (numerator > 0) & (denominator > 0)
        ratio = torch.where(ok, numerator / torch.where(ok, denominator, torch.ones_like(denominator)),
                            torch.zeros_like(numerator))
        return ratio.sqrt() + eps

    def init(self, batch: int, like: Tensor) -> Influence:
        return like.new_zeros(batch, self.n), like.new_zeros(batch, self.a, self.K)

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        s, theta = influence
        hs = torch.bmm(H, s.unsqueeze(2)).squeeze(2)
        nu = rademacher(s.shape, s)
        nu_f = h_hat[:, :, None] * torch.bmm(nu.unsqueeze(1), D)  # (B, a, K)
        rho0 = self._rho(theta.flatten(1).norm(dim=1), hs.norm(dim=1))
        rho1 = self._rho(nu_f.flatten(1).norm(dim=1), nu.norm(dim=1))
        s_new = rho0[:, None] * hs + rho1[:, None] * nu
        theta_new = theta / rho0[:, None, None] + nu_f / rho1[:, None, None]
        return s_new, theta_new

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        s, theta = influence
        return torch.einsum("b,bak->ak", (q * s).sum(1), theta)


def _ratio_sqrt(numerator: Tensor, denominator: Tensor) -> Tensor:
    """sqrt(num / den), 1 where either is zero (the term it balances is then zero, so any scale is unbiased)."""
    ok = (numerator > 0) & (denominator > 0)
    safe = torch.where(ok, numerator / torch.where(ok, denominator, torch.ones_like(denominator)),
                       torch.ones_like(numerator))
    return safe.sqrt()


class KFRTRL(KroneckerEstimator):
    """One Kronecker product u (x) A, u (B, a), A (B, n, K) (spec K1-K4): two random signs mix
    u (x) H A + h_hat (x) D into one product; p1, p2 balance the norms of the cross terms."""

    def init(self, batch: int, like: Tensor) -> Influence:
        return like.new_zeros(batch, self.a), like.new_zeros(batch, self.n, self.K)

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        u, A = influence
        HA = torch.bmm(H, A)
        p1 = _ratio_sqrt(HA.flatten(1).norm(dim=1), u.norm(dim=1))
        p2 = _ratio_sqrt(D.flatten(1).norm(dim=1), h_hat.norm(dim=1))
        c1, c2 = rademacher((u.shape[0],), u), rademacher((u.shape[0],), u)
        u_new = (c1 * p1)[:, None] * u + (c2 * p2)[:, None] * h_hat
        A_new = (c1 / p1)[:, None, None] * HA + (c2 / p2)[:, None, None] * D
        return u_new, A_new

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        u, A = influence
        return torch.einsum("ba,bk->ak", u, torch.bmm(q.unsqueeze(1), A).squeeze(1))


def _whitening(gram: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """For a batch of Gram matrices F^T F (B, p, p): (R, W) with F = (F W) R, F W orthonormal on F's range and W
    zero on its null space. In float64 and on the Gram scaled to a unit diagonal (the rounding of a float32 Gram is
    relative to its columns' norms, and OK's columns span orders of magnitude). Zero columns, and directions whose
    scaled eigenvalue is below rtol, get zero weight; rtol must stay near eps^2: a dropped direction that is not null
    biases the step (a threshold of 2e-5 gave 5e-4 relative at n = 128)."""
    gram = gram.double()
    scale = gram.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()  # column norms
    inverse_scale = torch.where(scale > 0, 1 / torch.where(scale > 0, scale, torch.ones_like(scale)),
                                torch.zeros_like(scale))
    values, vectors = torch.linalg.eigh(inverse_scale[:, :, None] * gram * inverse_scale[:, None, :])
    keep = values > rtol
    root = torch.where(keep, values.clamp(min=0).sqrt(), torch.zeros_like(values))
    inverse_root = torch.where(keep, 1 / torch.where(keep, root, torch.ones_like(root)), torch.zeros_like(root))
    R = root[:, :, None] * vectors.transpose(1, 2) * scale[:, None, :]
    W = inverse_scale[:, :, None] * vectors * inverse_root[:, None, :]
    return R, W


def _stacked_gram(old: Tensor, new: Tensor) -> Tensor:
    """The Gram matrix of [old | new] (B, d, r) and (B, d) without forming the stack: (B, r+1, r+1)."""
    cross = torch.bmm(new.unsqueeze(1), old)  # (B, 1, r); as a row times a matrix (the column form is far slower)
    top = torch.cat([torch.bmm(old.transpose(1, 2), old), cross.transpose(1, 2)], 2)
    bottom = torch.cat([cross, torch.bmm(new.unsqueeze(1), new.unsqueeze(2))], 2)
    return torch.cat([top, bottom], 1)


def _opt_diagnostics(sigma: Tensor, coeff_u: Tensor, coeff_a: Tensor, stats: dict, log_noise: str) -> dict:
    """OK's per-batch diagnostics as 0-dim device tensors. ``formula``: the symmetric split's variance
    S^2/(m-1) - sum_M d^2; ``measured``: the reduction error of this step in the family's orthonormal basis,
    |C_u C_A^T - diag(sigma)|_F^2 (= |G_new - G|_F^2), for the split in use (the formula under-reports the official
    split's)."""
    out = {"ok_mixed_minus_one": (stats["mixed"] - 1).to(sigma.dtype).mean(),
           "ok_mixed_share": stats["mixed_share"].mean()}
    if log_noise in ("formula", "both"):
        out["ok_variance_formula"] = stats["variance"].mean()
    if log_noise in ("measured", "both"):
        error = coeff_u @ coeff_a.transpose(1, 2) - torch.diag_embed(sigma)
        out["ok_variance_measured"] = (error * error).sum((1, 2)).mean()
    return out


class OK(KroneckerEstimator):
    """Optimal Kronecker-sum approximation with r terms (spec O1-O8), stored as U (B, a, r) and A (B, n, K, r).

    One step: A_i <- H A_i for all i as one bmm on the (B, n, K*r) view (the cost floor, 2 B r n^2 K), then the
    family u_0..u_r = (U, h_hat), A_0..A_r = (H A, D) is reduced to r terms without forming it: its two (r+1)-sized
    Gram matrices (one bmm each) give, in float64, orthonormalising transforms W_u, W_A and factors R_u, R_A with
    u = (u W_u) R_u; the SVD of the (r+1)x(r+1) core R_u R_A^T gives the singular values Opt(sigma)
    mixes (``split``: symmetric = minimum variance, official = the OK code). Rebalancing each new pair to equal norms
    (norms from the Gram) is folded into the small mixing matrices, so the new A is one bmm over H A plus an in-place
    rank-one update with D. When min(a, n K) <= r the family has rank <= r and the step is exact (the smallest
    singular value is dropped). Accuracy: the whitening keeps every direction above a numerically-null threshold, so
    W R = I on the family's span and the step is unbiased whatever the Gram's rounding (which only perturbs which
    directions Opt sees as small); in float32 at training-like states its bias equals the QR step's (1e-7 relative,
    tests/test_online.py). ``OKQR`` (``algorithm.ok.orthonormalise=qr``) is the QR reference."""

    def __init__(self, cell: RecurrentCell, rank: int = 16, split: str = "symmetric", rebalance: bool = True,
                 log_noise: str = "both") -> None:
        super().__init__(cell)
        self.rank, self.split, self.rebalance, self.log_noise = rank, split, rebalance, log_noise
        self.exact = min(self.a, self.n * self.K) <= rank
        self.diagnostics = {}

    def init(self, batch: int, like: Tensor) -> Influence:
        return like.new_zeros(batch, self.a, self.rank), like.new_zeros(batch, self.n, self.K, self.rank)

    @staticmethod
    def terms(influence: Influence) -> tuple[Tensor, Tensor]:
        """The r Kronecker terms as U (B, r, a) and A (B, r, n, K): G = sum_i u_i (x) A_i (views, no copy)."""
        U, A = influence
        return U.transpose(1, 2), A.permute(0, 3, 1, 2)

    @staticmethod
    def from_terms(U: Tensor, A: Tensor) -> Influence:
        """The inverse of ``terms``: the influence from U (B, r, a) and A (B, r, n, K)."""
        return U.transpose(1, 2).contiguous(), A.permute(0, 2, 3, 1).contiguous()

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        U, A = influence
        batch, n, K, r = A.shape
        HA = torch.bmm(H, A.view(batch, n, K * r)).view(batch, n * K, r)
        D = D.reshape(batch, n * K)
        rtol = 10 * (r + 1) * torch.finfo(U.dtype).eps ** 2  # only numerically null directions: dropping more biases
        gram_u, gram_a = _stacked_gram(U, h_hat), _stacked_gram(HA, D)
        R_u, W_u = _whitening(gram_u, rtol)
        R_a, W_a = _whitening(gram_a, rtol)
        left, sigma, right_h = torch.linalg.svd(R_u @ R_a.transpose(1, 2))
        # ascending, as Opt expects; the singular directions are (u W_u) left and (A W_a) right
        sigma, left, right = sigma.flip(-1), left.flip(-1), right_h.transpose(1, 2).flip(-1)
        if self.exact:  # rank <= r: keep the r largest terms, no noise
            coeff_u = torch.eye(r + 1, dtype=sigma.dtype, device=sigma.device)[:, 1:].expand(batch, -1, -1)
            coeff_a = coeff_u * sigma[:, :, None]
            self.diagnostics = {}
        else:
            signs = rademacher(sigma.shape, sigma)
            coeff_u, coeff_a, stats = opt_coefficients(sigma, signs, self.split)
            # 0-dim tensors, summed on the device and read by the trainer once per log row
            self.diagnostics = _opt_diagnostics(sigma, coeff_u, coeff_a, stats, self.log_noise)
        mix_u, mix_a = W_u @ (left @ coeff_u), W_a @ (right @ coeff_a)  # (B, r+1, r) over (u, h_hat) and (HA, D)
        if self.rebalance:  # |u_s| = |A_s|: the squared norms are the Gram's quadratic forms
            norm2_a = (mix_a * (gram_a.double() @ mix_a)).sum(1)
            norm2_u = (mix_u * (gram_u.double() @ mix_u)).sum(1)
            gamma = _ratio_sqrt(norm2_a.clamp(min=0).sqrt(), norm2_u.clamp(min=0).sqrt())  # (B, r)
            mix_u, mix_a = mix_u * gamma[:, None, :], mix_a / gamma[:, None, :]
        mix_u, mix_a = mix_u.to(U.dtype), mix_a.to(U.dtype)
        # the new term's share added in place (a bmm with inner size 1 is several times slower than the mixing)
        U_new = torch.bmm(U, mix_u[:, :r]).addcmul_(h_hat[:, :, None], mix_u[:, r:])
        A_new = torch.bmm(HA, mix_a[:, :r]).addcmul_(D[:, :, None], mix_a[:, r:])
        return U_new, A_new.view(batch, n, K, r)

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        U, A = influence
        batch, n, K, r = A.shape
        qa = torch.bmm(q.unsqueeze(1), A.view(batch, n, K * r)).view(batch, K, r)  # q^T A_i for all i
        return torch.einsum("bar,bkr->ak", U, qa)


class OKQR(OK):
    """OK with Householder QR of the stacked families (``algorithm.ok.orthonormalise=qr``): the earlier
    implementation, backward stable in float32 where the Gram path keeps only about half the digits of near-dependent
    families, and about 2x slower at n = 128. Layout U (B, r, a), A (B, r, n, K); per step: a broadcast matmul for
    H A_i, the stacked families (cat), a QR of each, the SVD of the core, explicit new factors from the bases, and
    rebalancing by norms over the big tensors. The tests and ``scripts/bench_online.py`` compare the two."""

    def init(self, batch: int, like: Tensor) -> Influence:
        return like.new_zeros(batch, self.rank, self.a), like.new_zeros(batch, self.rank, self.n, self.K)

    @staticmethod
    def terms(influence: Influence) -> tuple[Tensor, Tensor]:
        return influence[0], influence[1]

    @staticmethod
    def from_terms(U: Tensor, A: Tensor) -> Influence:
        return U.contiguous(), A.contiguous()

    def propagate(self, influence: Influence, h_hat: Tensor, D: Tensor, H: Tensor) -> Influence:
        U, A = influence
        batch, r = U.shape[:2]
        A = torch.matmul(H.unsqueeze(1), A)
        us = torch.cat([U, h_hat.unsqueeze(1)], 1)  # (B, r+1, a)
        As = torch.cat([A, D.unsqueeze(1)], 1).flatten(2)  # (B, r+1, nK)
        basis_u, coef_u = torch.linalg.qr(us.transpose(1, 2))
        basis_a, coef_a = torch.linalg.qr(As.transpose(1, 2))
        left, sigma, right_h = torch.linalg.svd(coef_u @ coef_a.transpose(1, 2), full_matrices=False)
        sigma, left, right = sigma.flip(-1), left.flip(-1), right_h.transpose(1, 2).flip(-1)
        p = sigma.shape[-1]
        if p <= r:
            mix_u = torch.cat([left, left.new_zeros(batch, left.shape[1], r - p)], 2)
            mix_a = torch.cat([right * sigma[:, None, :], right.new_zeros(batch, right.shape[1], r - p)], 2)
            self.diagnostics = {}
        else:
            coeff_u, coeff_a, stats = opt_coefficients(sigma, rademacher(sigma.shape, sigma), self.split)
            mix_u, mix_a = left @ coeff_u, right @ coeff_a
            self.diagnostics = _opt_diagnostics(sigma, coeff_u, coeff_a, stats, self.log_noise)
        u_new = (basis_u @ mix_u).transpose(1, 2)
        a_new = (basis_a @ mix_a).transpose(1, 2)
        if self.rebalance:
            gamma = _ratio_sqrt(a_new.norm(dim=2), u_new.norm(dim=2))
            u_new = u_new * gamma[:, :, None]
            a_new = a_new / gamma[:, :, None]
        return u_new, a_new.view(batch, r, self.n, self.K)

    def gradient(self, influence: Influence, q: Tensor) -> Tensor:
        U, A = influence
        qa = torch.einsum("bi,brik->brk", q, A)
        return torch.einsum("bra,brk->ak", U, qa)


# ------------------------------------------------------------------------------------------- any cell: autograd
class _OneStep(nn.Module):
    """state_t = f(state_{t-1}, x_t; theta) through the cell's step path, for torch.func."""

    def __init__(self, cell: RecurrentCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, flat_state: Tensor) -> Tensor:
        n = self.cell.hidden_size
        state = tuple(flat_state.split(n, -1))
        gx = self.cell.project_inputs(x.unsqueeze(0)).squeeze(0)
        return torch.cat(self.cell.step(gx, state, self.cell.prepare()), -1)


class AutogradRTRL:
    """Exact RTRL for any cell: per-sample Jacobians H_t = dstate_t/dstate_{t-1} and F_t = dstate_t/dtheta by
    torch.func (vmap over the batch), G (B, S, P) with S the flattened state (2n for an LSTM) and P the cell's
    parameter count. O(S^2 P) time per step: small n only."""

    def __init__(self, cell: RecurrentCell) -> None:
        from torch.func import functional_call, jacrev, vmap

        self.cell = cell
        self.module = _OneStep(cell)
        self.names = [name for name, _ in self.module.named_parameters()]
        self.params = [p for _, p in self.module.named_parameters()]
        self.S = len(cell.state_names) * cell.hidden_size

        def single(params: dict, x: Tensor, s: Tensor) -> Tensor:
            return functional_call(self.module, params, (x.unsqueeze(0), s.unsqueeze(0))).squeeze(0)

        self._jacobians = vmap(jacrev(single, argnums=(0, 2)), in_dims=(None, 0, 0))

    def init(self, batch: int, like: Tensor) -> Influence:
        return (like.new_zeros(batch, self.S, sum(p.numel() for p in self.params)),)

    def zero_rows(self, influence: Influence, rows: Tensor) -> Influence:
        return _zero_rows(influence, rows)

    def step(self, influence: Influence, x: Tensor, state: State) -> tuple[State, Influence, dict]:
        flat = torch.cat(state, -1)
        params = {name: p.detach() for name, p in zip(self.names, self.params)}
        jac_params, jac_state = self._jacobians(params, x, flat)
        F = torch.cat([jac_params[name].flatten(2) for name in self.names], 2)  # (B, S, P)
        G = torch.bmm(jac_state, influence[0]) + F
        new_flat = self.module(x, flat)
        return tuple(new_flat.split(self.cell.hidden_size, -1)), (G,), {}

    def accumulate(self, influence: Influence, q: Tensor) -> None:
        from rnnrepro.cells.base import add_grad

        grad = torch.einsum("bs,bsp->p", q, influence[0])
        for p, g in zip(self.params, grad.split([p.numel() for p in self.params])):
            add_grad(p, g.view_as(p))

    @property
    def diagnostics(self) -> dict:
        return {}


def build_estimator(cfg: Any, cell: RecurrentCell) -> Any:
    name = str(getattr(cfg.name, "value", cfg.name))
    if name == "rtrl":
        mode = str(getattr(cfg.rtrl_jacobians, "value", cfg.rtrl_jacobians))
        if mode == "autograd" or (mode == "auto" and not isinstance(cell, KroneckerCell)):
            return AutogradRTRL(cell)
        return ExactKronecker(cell)
    if name == "uoro":
        return UORO(cell, eps=float(cfg.uoro.eps),
                    eps_placement=str(getattr(cfg.uoro.eps_placement, "value", cfg.uoro.eps_placement)))
    if name == "kf_rtrl":
        return KFRTRL(cell)
    if name == "ok":
        method = str(getattr(cfg.ok.orthonormalise, "value", cfg.ok.orthonormalise))
        return (OKQR if method == "qr" else OK)(cell, rank=int(cfg.ok.rank),
                                                split=str(getattr(cfg.ok.split, "value", cfg.ok.split)),
                                                rebalance=bool(cfg.ok.rebalance),
                                                log_noise=str(getattr(cfg.ok.log_noise, "value", cfg.ok.log_noise)))
    raise ValueError(f"no influence estimator for algorithm {name!r}")
