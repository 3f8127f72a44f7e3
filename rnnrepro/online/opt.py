"""Opt(sigma): the minimum-variance unbiased reduction of r+1 orthonormal Kronecker terms to r (online_rtrl spec O5).

Given singular values d_0 <= ... <= d_r (ascending) of a sum of r+1 mutually orthonormal Kronecker terms
sum_j d_j u_j (x) V_j, the r+1-m largest terms are kept and the m smallest (the mixed set M, the longest prefix with
(m-1) d_{m-1} <= sum_{j<m} d_j) are replaced by m-1 randomly signed mixtures whose expectation is exact and whose
variance S^2/(m-1) - sum_M d_j^2 (S = sum_M d_j) is the lower bound for any unbiased rank-(m-1) replacement.

Everything here is batched over a leading dimension B and returns coefficient matrices over the sorted basis, so
the same code serves the training step and the exhaustive tests of unbiasedness and variance.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPLITS = ("symmetric", "official")


def mixed_count(d: Tensor) -> Tensor:
    """m per row: the number of leading indices s with s d_s <= sum_{j<=s} d_j (a prefix; m >= 2). d: (B, p)."""
    index = torch.arange(d.shape[-1], device=d.device, dtype=d.dtype)
    cumulative = d.cumsum(-1)
    holds = index * d <= cumulative  # no slack: an admitted s with s d_s > sum makes a d_s > 1 (biased); ties are moot
    return holds.long().cumprod(-1).sum(-1).clamp(min=2)


def opt_coefficients(d: Tensor, signs: Tensor, split: str = "symmetric") -> tuple[Tensor, Tensor, dict]:
    """Coefficients of the r new terms over the sorted orthonormal basis.

    d: (B, r+1) ascending singular values; signs: (B, r+1) entries +-1. Returns (Cu, CA), each (B, r+1, r), with
    u_new[s] = sum_j Cu[j, s] u_j and A_new[s] = sum_j CA[j, s] V_j, and a dict of per-row diagnostics:
    ``mixed`` (m), ``variance`` (the step variance S^2/(m-1) - sum_M d^2 of the symmetric split) and
    ``mixed_share`` (sum_M d / sum d).

    New slot s (0..r-1) holds basis index s+1: a mixture when s+1 < m (column s+1 of the Householder reflection that
    maps e_0 to v0, i.e. an orthonormal completion of v0 inside M), the kept term j = s+1 otherwise.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    batch, p = d.shape
    index = torch.arange(p, device=d.device)
    m = mixed_count(d)
    in_mixed = index < m[:, None]
    total = (d * in_mixed).sum(-1)
    nonzero = total > 0
    scale = torch.where(nonzero, (m - 1).to(d.dtype) / torch.where(nonzero, total, torch.ones_like(total)),
                        torch.ones_like(total))  # a = (m-1)/S; a*d_j <= 1 on M
    v0 = torch.sqrt((1 - scale[:, None] * d).clamp(min=0)) * in_mixed
    v = -v0
    v[:, 0] += 1  # Householder vector e_0 - v0; zero when v0 = e_0 (then the reflection is the identity)
    norm2 = (v * v).sum(-1)
    norm2 = torch.where(norm2 > 0, norm2, torch.ones_like(norm2))[:, None, None]
    eye = torch.eye(p, device=d.device, dtype=d.dtype).expand(batch, p, p)
    reflect = eye - 2 * v[:, :, None] * v[:, None, :] / norm2
    completion = reflect[:, :, 1:]  # (B, p, r): orthonormal, orthogonal to v0, supported on M for mixed slots
    mixed_slot = (index[1:][None, :] < m[:, None])[:, None, :]  # (B, 1, r)
    mix = completion * signs[:, :, None] * scale.rsqrt()[:, None, None] * nonzero[:, None, None]
    keep = eye[:, :, 1:]
    if split == "symmetric":
        mix_u, mix_a = mix, mix
    else:  # the OK code: divide the u-side by sqrt(d_j), multiply the A-side by sqrt(d_j); rows with d_j = 0 are 0
        root = d.clamp(min=0).sqrt()[:, :, None]
        mix_u = torch.where(root > 0, mix / torch.where(root > 0, root, torch.ones_like(root)), torch.zeros_like(mix))
        mix_a = mix * root
    coeff_u = torch.where(mixed_slot, mix_u, keep)
    coeff_a = torch.where(mixed_slot, mix_a, keep * d[:, :, None])
    mixed_d = d * in_mixed
    variance = torch.where(nonzero, total**2 / (m - 1).to(d.dtype) - (mixed_d**2).sum(-1), torch.zeros_like(total))
    share = total / d.sum(-1).clamp(min=torch.finfo(d.dtype).tiny)
    return coeff_u, coeff_a, {"mixed": m, "variance": variance, "mixed_share": share}


def rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    bits = torch.randint(0, 2, shape, device=like.device, generator=generator)
    return (2 * bits - 1).to(like.dtype)
