"""Stable Recurrent Models (Miller & Hardt, ICLR 2019): the weight projections that keep a cell contractive.

Applied by the cells after every optimizer step (``after_optimizer_step``), under ``torch.no_grad()`` and in place,
so the flat weight buffers of the fused oneDNN / cuDNN modules stay aliased (spec section 3 and section 7 item 8).

- RNN (spec S6): the recurrent matrix W_hh gets ||W_hh||_2 <= ``max_sv``.
  - ``method=svd`` (the author code): a full SVD, singular values clipped at max_sv; those below stay, so it is the
    Euclidean projection onto the spectral-norm ball.
  - ``method=power_iter`` (the author comment's suggestion): warm-started power iteration estimates sigma_max, and
    W is scaled by max_sv / sigma_max when it exceeds the cap. This is spectral *normalisation*: every singular
    value shrinks by the same factor, so it is not the same map as the SVD clip (both satisfy the constraint).
- LSTM (spec S7): each gate block of W_hh (i, f, g, o; the code calls g "z") and the forget block U_f of W_ih gets a
  fixed l1 norm per row (``norm_axis=rows``, the paper's "normalizing the rows": bounds the induced l-inf norm) or per
  column (``cols``, the author code: bounds the induced l1 norm). ``norm_mode=rescale`` sets every row/column to
  exactly c (the code); ``clip`` is the true projection, min(1, c / norm). Biases are free unless
  ``constrain_forget_bias`` clamps the forget-gate biases at <= 0 (the derived condition S8 assumes none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from rnnrepro.schema import positive, require


class SpectralMethod(str, Enum):
    svd = "svd"
    power_iter = "power_iter"


class NormAxis(str, Enum):
    rows = "rows"
    cols = "cols"


class NormMode(str, Enum):
    rescale = "rescale"
    clip = "clip"


@dataclass
class StableRNNConfig:
    """``model.stable`` of the tanh RNN (spec S6; flags of section 7)."""

    enabled: bool = False  # true: the "Stable RNN" column (projection after every optimizer step)
    method: SpectralMethod = SpectralMethod.svd  # svd: the author code | power_iter: its comment's suggestion
    max_sv: float = 1.0  # the code clips at exactly 1.0 (||W|| <= 1, not the strict < 1 of S3)
    power_iterations: int = 1  # power_iter only: iterations per optimizer step, warm-started from the last step

    def __post_init__(self) -> None:
        positive(self.max_sv, "model.stable.max_sv")
        require(self.power_iterations >= 1, "model.stable.power_iterations", f"must be >= 1, got "
                f"{self.power_iterations}")


@dataclass
class LSTMNormConstants:
    """The l1 norm of each block after normalisation (author code: "one set of weights satisfying stability
    requirement" [code: millerjohnp/TCN@ecfd231 TCN/poly_music/model.py])."""

    i: float = 0.395
    f: float = 0.155
    z: float = 0.099
    o: float = 0.395
    u_f: float = 0.25  # the forget-gate block of the input matrix

    def __post_init__(self) -> None:
        for key in ("i", "f", "z", "o", "u_f"):
            positive(getattr(self, key), f"model.stable.constants.{key}")


@dataclass
class StableLSTMConfig:
    """``model.stable`` of the LSTM (spec S7; flags of section 7)."""

    enabled: bool = False  # true: the "Stable LSTM" column
    norm_axis: NormAxis = NormAxis.rows  # rows: the paper's description [seed-summary] | cols: the author code
    norm_mode: NormMode = NormMode.rescale  # rescale: every row/column set to exactly c (code) | clip: projection
    constants: LSTMNormConstants = field(default_factory=LSTMNormConstants)
    constrain_forget_bias: bool = False  # false: the code (biases free) | true: forget biases clamped at <= 0 (S8)


@torch.no_grad()
def clip_singular_values_(weight: Tensor, max_sv: float) -> Tensor:
    """In place: W = U S V^T with S <- min(S, max_sv). Returns the singular values before the clip."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    if s[0] > max_sv:
        weight.copy_((u * s.clamp(max=max_sv)) @ vh)
    return s


@torch.no_grad()
def power_iteration_sigma(weight: Tensor, v: Tensor, iterations: int) -> Tensor:
    """sigma_max estimate of ``weight`` by power iteration on W^T W from ``v`` (updated in place, unit norm)."""
    for _ in range(iterations):
        u = weight @ v
        u /= u.norm().clamp(min=1e-30)
        v.copy_(weight.t() @ u)
        v /= v.norm().clamp(min=1e-30)
    return (weight @ v).norm()


@torch.no_grad()
def normalise_spectral_(weight: Tensor, v: Tensor, max_sv: float, iterations: int) -> Tensor:
    """In place: W <- W * max_sv / sigma when the power-iteration estimate sigma exceeds max_sv. Returns sigma."""
    sigma = power_iteration_sigma(weight, v, iterations)
    if sigma > max_sv:
        weight.mul_(max_sv / sigma)
    return sigma


@torch.no_grad()
def normalise_l1_(block: Tensor, c: float, axis: str, mode: str) -> None:
    """In place: every row (``axis="rows"``, the sum over the input dimension) or column (``"cols"``, the sum over
    the output dimension) of ``block`` gets l1 norm ``c`` (``mode="rescale"``) or at most ``c`` (``"clip"``). An
    all-zero row/column has no direction and stays zero."""
    norms = block.abs().sum(dim=1 if axis == "rows" else 0, keepdim=True)
    scale = c / norms.clamp(min=torch.finfo(block.dtype).tiny)
    if mode == "clip":
        scale = scale.clamp(max=1.0)
    block.mul_(torch.where(norms > 0, scale, torch.ones_like(scale)))


def induced_norm(weight: Tensor, p: str) -> float:
    """Operator norm induced by l1 (max column sum, ``p="l1"``) or l-inf (max row sum, ``"linf"``) for y = W x."""
    return float(weight.abs().sum(0 if p == "l1" else 1).max())
