"""Generated long-memory tasks: the adding problem and the copying-memory task.

Both generate fixed, seeded train / validation / test sets (``data.split_seed`` seeds the generator, so every run and
every seed sees the same task), held in memory.

Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016): T steps of two channels, a
value ~ U(0, 1) and a marker that is 1 at exactly two steps; the target is the sum of the two marked values (MSE).
``data.markers=halves`` puts one marker in each half of the sequence (Arjovsky et al.), ``uniform`` draws two
distinct positions anywhere (Le et al.). The SBO-RNN paper's generator is not found; ``halves`` is a harness choice.

Copying memory (Arjovsky et al. 2016): 10 symbols from {1..8}, then ``lag`` - 1 blanks (0), a delimiter (9) and 10
blanks; the target is blank everywhere except the last 10 steps, which repeat the 10 symbols. Inputs are one-hot
(10 channels); per-step 10-way classification. A model that outputs blanks and then guesses scores the baseline
cross-entropy 10 ln(8) / (lag + 20) per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from rnnrepro.data.base import DataSpec, GeneratedDataConfig, InMemorySequenceData
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

COPY_SYMBOLS, COPY_LENGTH, BLANK, DELIMITER = 8, 10, 0, 9


# ------------------------------------------------------------------------------------------------- config schema
class AddingMarkers(str, Enum):
    halves = "halves"
    uniform = "uniform"


@register_schema("data", "adding")
@dataclass
class AddingDataConfig(GeneratedDataConfig):
    _target_: str = "rnnrepro.data.synthetic.AddingProblem"
    name: str = "adding"
    seq_len: int = 100
    markers: AddingMarkers = AddingMarkers.halves

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.seq_len >= 2, "data.seq_len", f"must be >= 2, got {self.seq_len}")


@register_schema("data", "copy_memory")
@dataclass
class CopyMemoryDataConfig(GeneratedDataConfig):
    _target_: str = "rnnrepro.data.synthetic.CopyMemory"
    name: str = "copy_memory"
    lag: int = 100
    metric: str = "loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.lag >= 1, "data.lag", f"must be >= 1, got {self.lag}")
        require(self.metric in ("loss", "acc"), "data.metric", f"must be loss or acc, got {self.metric!r}")


def adding_problem(n: int, length: int, markers: str, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    values = torch.rand(n, length, generator=generator)
    mask = torch.zeros(n, length)
    if markers == "halves":
        half = length // 2
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, length, (n,), generator=generator)
    else:
        scores = torch.rand(n, length, generator=generator)
        first, second = scores.topk(2, dim=1).indices.unbind(1)
    rows = torch.arange(n)
    mask[rows, first] = 1.0
    mask[rows, second] = 1.0
    x = torch.stack([values, mask], dim=-1)
    y = (values * mask).sum(1, keepdim=True)
    return x, y


def copy_memory(n: int, lag: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    total = lag + 2 * COPY_LENGTH
    symbols = torch.randint(1, COPY_SYMBOLS + 1, (n, COPY_LENGTH), generator=generator)
    tokens = torch.full((n, total), BLANK, dtype=torch.long)
    tokens[:, :COPY_LENGTH] = symbols
    tokens[:, COPY_LENGTH + lag - 1] = DELIMITER
    target = torch.full((n, total), BLANK, dtype=torch.long)
    target[:, -COPY_LENGTH:] = symbols
    return tokens, target


class _GeneratedData(InMemorySequenceData):
    def _sizes(self) -> dict[str, int]:
        return {"train": int(self.cfg.n_train), "val": int(self.cfg.n_val), "test": int(self.cfg.n_test)}

    def _generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(int(self.cfg.split_seed))
        xs, ys, self.splits, start = [], [], {}, 0
        for split, n in self._sizes().items():
            x, y = self._generate(n, generator)
            xs.append(x)
            ys.append(y)
            self.splits[split] = torch.arange(start, start + n)
            start += n
        self.x, self.y = torch.cat(xs), torch.cat(ys)

    def describe(self) -> dict:
        return {"name": self.cfg.name, "split_seed": int(self.cfg.split_seed), "seq_len": self.spec.seq_len,
                "sizes": self._sizes(), "permutation_sha1": None}


class AddingProblem(_GeneratedData):
    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        self.spec = DataSpec(input_size=2, output_size=1, task=TaskType.regression, seq_len=int(cfg.seq_len),
                             metric="mse")

    def _generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return adding_problem(n, int(self.cfg.seq_len), str(getattr(self.cfg.markers, "value", self.cfg.markers)),
                              generator)

    def make_batch(self, indices: Tensor) -> dict:
        return {"x": self.x[indices], "y": self.y[indices]}


class CopyMemory(_GeneratedData):
    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        self.spec = DataSpec(input_size=10, output_size=10, task=TaskType.classify_each,
                             seq_len=int(cfg.lag) + 2 * COPY_LENGTH, metric=str(cfg.metric))

    def _generate(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return copy_memory(n, int(self.cfg.lag), generator)

    def make_batch(self, indices: Tensor) -> dict:
        tokens = self.x[indices]
        return {"x": torch.nn.functional.one_hot(tokens, 10).float(), "y": self.y[indices]}

    def baseline_cross_entropy(self) -> float:
        import math

        return COPY_LENGTH * math.log(COPY_SYMBOLS) / self.spec.seq_len
