"""Named, hashed pixel permutations for permuted sequence tasks.

The RNN literature uses several different "pMNIST" permutations (shared/papers/README.md): the same seed 12008 gives
different orders under torch and numpy. A permutation is therefore chosen by name, built once when the dataset is
constructed, and identified in every summary and checkpoint by the SHA-1 of its int64 array.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PermutationSpec:
    kind: str  # identity | random | bitrev
    generator: str | None = None  # torch | numpy (kind=random)
    seed: int | None = None  # None with kind=random: the run seed
    source: str = ""

    def describe(self) -> dict:
        return {"kind": self.kind, "generator": self.generator, "seed": self.seed, "source": self.source}


NAMED_PERMUTATIONS: dict[str, PermutationSpec] = {
    "identity": PermutationSpec("identity", source="no permutation (sequential MNIST)"),
    "pmnist_numpy12008": PermutationSpec("random", "numpy", 12008, "SBO-RNN: numpy RandomState(12008).permutation"),
    "pmnist_torch12008": PermutationSpec("random", "torch", 12008, "LipschitzRNN, coRNN: torch.manual_seed(12008); "
                                         "torch.randperm"),
    "pmnist_numpy92916": PermutationSpec("random", "numpy", 92916, "expRNN: numpy RandomState(92916)"),
    "pmnist_numpy1234": PermutationSpec("random", "numpy", 1234, "nnRNN: numpy RandomState(1234)"),
    "pmnist_runseed": PermutationSpec("random", "numpy", None, "MomentumRNN: numpy RandomState(run seed); the task "
                                      "changes with the seed"),
    "bitrev": PermutationSpec("bitrev", source="S4: bit-reversal order"),
}


def check_permutation_name(name: str) -> None:
    if name not in NAMED_PERMUTATIONS:
        from rnnrepro.schema import ConfigError

        raise ConfigError(f"data.permutation: unknown permutation {name!r}; choose one of "
                          f"{', '.join(NAMED_PERMUTATIONS)}")


def _bit_reversal(length: int) -> np.ndarray:
    bits = max(1, int(np.ceil(np.log2(length))))
    codes = np.arange(2**bits)
    reversed_codes = np.zeros_like(codes)
    for b in range(bits):
        reversed_codes |= ((codes >> b) & 1) << (bits - 1 - b)
    return reversed_codes[reversed_codes < length]


def build_permutation(name: str, length: int, run_seed: int | None = None) -> torch.Tensor:
    """Returns the int64 index tensor of the named permutation; x_permuted = x[..., perm]."""
    check_permutation_name(name)
    spec = NAMED_PERMUTATIONS[name]
    if spec.kind == "identity":
        return torch.arange(length)
    if spec.kind == "bitrev":
        return torch.from_numpy(_bit_reversal(length).astype(np.int64))
    seed = spec.seed if spec.seed is not None else run_seed
    if seed is None:
        raise ValueError(f"permutation {name!r} is tied to the run seed, but no seed was given")
    if spec.generator == "numpy":
        return torch.from_numpy(np.random.RandomState(seed).permutation(length).astype(np.int64))
    # A private generator, so building the permutation never disturbs the global torch RNG (LipschitzRNN's mistake).
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def permutation_sha1(perm: torch.Tensor) -> str:
    return hashlib.sha1(perm.to(torch.int64).numpy().tobytes()).hexdigest()
