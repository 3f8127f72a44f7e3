"""Data-dependent stability: the spectral norm of the one-step state Jacobian on the data, and truncation gaps.

This is a harness design, not the paper's method (spec S9 `[inference]`): how Miller & Hardt measured "stable on the
data distribution" is not found. For every data time step t of a split (padding excluded), with s the whole state
((h) for an RNN, (h, c) for an LSTM):

    J_t = d s_t / d s_{t-1}  at the visited state s_{t-1} and the input x_t,

by autograd through the cell's own ``step``. Reported: the distribution of ||J_t||_2 over the sampled steps and the
fraction below 1 (a step where the state map contracts locally). For a state of at most ``exact_max_dim`` entries the
full Jacobian is formed and its largest singular value taken exactly; above that, ``iterations`` of power iteration on
J^T J (Jacobian-vector and vector-Jacobian products, all sampled steps at once), which gives a lower bound that is
tight once converged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.func import jacrev, jvp, vjp, vmap

from rnnrepro.models import SequenceModel, StackedCell


def _probe_cell(model: SequenceModel):
    cell = model.cell
    if isinstance(cell, StackedCell) or getattr(cell, "num_layers", 1) > 1:
        raise ValueError("the stability probe steps one recurrent layer; this model stacks several. Use "
                         "model.num_layers=1, or trainer.stability_probe_every=0")
    return cell


@torch.no_grad()
def collect_steps(model: SequenceModel, batches: Iterable[dict], max_points: int, seed: int = 0
                  ) -> tuple[Tensor, Tensor]:
    """(gx, s_prev): the projected inputs (N, k) and the flattened states before them (N, d) of up to
    ``max_points`` data time steps (uniformly sampled over the split with a fixed seed; padding excluded)."""
    cell = _probe_cell(model)
    was_training = model.training
    model.eval()
    gxs, states = [], []
    for batch in batches:
        x = model._encode(batch["x"])  # (T, B, m), eval mode: no dropout
        gx = cell.project_inputs(x)
        ctx = cell.prepare()
        state = cell.init_state(x.shape[1], x)
        mask = batch.get("mask")
        keep = (mask.t() if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        for t, gx_t in enumerate(gx.unbind(0)):
            rows = keep[t]
            if rows.any():
                gxs.append(gx_t[rows])
                states.append(torch.cat(state, -1)[rows])
            state = cell.step(gx_t, state, ctx)
    model.train(was_training)
    if not gxs:
        raise ValueError("the stability probe found no data time steps in this split")
    gx_all, s_all = torch.cat(gxs), torch.cat(states)
    if gx_all.shape[0] > max_points:
        pick = torch.randperm(gx_all.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        gx_all, s_all = gx_all[pick.to(gx_all.device)], s_all[pick.to(s_all.device)]
    return gx_all, s_all


def jacobian_norms(cell, gx: Tensor, s_prev: Tensor, exact_max_dim: int = 256, iterations: int = 50
                   ) -> tuple[Tensor, str]:
    """||d s_t / d s_{t-1}||_2 for each row, and the method used ("exact" or "power<iterations>")."""
    sizes = [cell.hidden_size] * len(cell.state_names)
    ctx = cell.prepare()

    def step(s: Tensor, g: Tensor) -> Tensor:  # rows are independent: J is block-diagonal over them
        return torch.cat(cell.step(g, tuple(s.split(sizes, -1)), ctx), -1)

    d = s_prev.shape[1]
    if d <= exact_max_dim:
        def one(s: Tensor, g: Tensor) -> Tensor:
            return jacrev(lambda z: step(z.unsqueeze(0), g.unsqueeze(0)).squeeze(0))(s)

        with torch.no_grad():
            jac = vmap(one)(s_prev, gx)  # (N, d, d)
            return torch.linalg.matrix_norm(jac, ord=2), "exact"
    with torch.no_grad():
        v = torch.randn(s_prev.shape, generator=torch.Generator().manual_seed(0)).to(s_prev)
        v = v / v.norm(dim=1, keepdim=True)
        _, pullback = vjp(lambda z: step(z, gx), s_prev)
        for _ in range(iterations):
            _, jv = jvp(lambda z: step(z, gx), (s_prev,), (v,))
            (v,) = pullback(jv)
            v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
        _, jv = jvp(lambda z: step(z, gx), (s_prev,), (v,))
        return jv.norm(dim=1), f"power{iterations}"


def summarise_norms(norms: Tensor, method: str) -> dict:
    values = norms.double().cpu()
    quantiles = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=values.dtype)).tolist()
    return {"points": int(values.numel()), "method": method, "mean": float(values.mean()),
            "q10": quantiles[0], "median": quantiles[1], "q90": quantiles[2], "max": float(values.max()),
            "frac_below_1": float((values < 1).double().mean())}


def stability_probe(model: SequenceModel, batches: Iterable[dict], max_points: int = 1000, iterations: int = 50,
                    exact_max_dim: int = 256) -> dict:
    """The distribution of the state-Jacobian norm over sampled data time steps (see the module docstring)."""
    gx, s_prev = collect_steps(model, batches, max_points)
    norms, method = jacobian_norms(_probe_cell(model), gx, s_prev, exact_max_dim, iterations)
    return summarise_norms(norms, method)


def geometric_rate(ks: list[int], gaps: list[float]) -> float:
    """exp(slope) of the least-squares line through (k, log gap) over the positive gaps: the fitted factor by which
    the gap shrinks per extra step of context. NaN with fewer than two positive gaps."""
    points = [(k, math.log(g)) for k, g in zip(ks, gaps) if g > 0 and math.isfinite(g)]
    if len(points) < 2:
        return float("nan")
    mean_k = sum(k for k, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((k - mean_k) ** 2 for k, _ in points)
    slope = sum((k - mean_k) * (y - mean_y) for k, y in points) / var
    return math.exp(slope)
