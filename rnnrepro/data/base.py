"""The dataset interface and an in-memory implementation shared by tensor datasets.

A data module loads its files in ``setup`` (raising DataNotFoundError with the expected files, the download URLs
and the config keys to set), declares a DataSpec (input size, output size, task type), and yields batches as dicts
``{"x": (B, T, m) or (B, T), "y": ..., optional "mask": (B, T), optional "reset": (B, T)}``, batch-first.

- ``mask`` (bool): the positions that carry a target (loss and metrics are computed over these only).
- ``reset`` (bool): True at (b, t) means that the recurrent state of stream b -- and any online influence matrix an
  algorithm keeps for it (RTRL, UORO, KF-RTRL, OK) -- is set to zero *before* step t is processed. Streams that read
  one long input (the string-memorisation task's back-to-back sequences, CHAR-PTB with ``data.train_reset_every``)
  use it to cut the state at sequence boundaries. Absent means no reset inside the batch. Algorithms that do not
  support it (plain BPTT today) ignore it.

Task-side hooks (no-ops by default), called by the trainer for every training algorithm: ``observe(step_losses)``
after each training batch (the string-memorisation curriculum lives there, not in the trainer), ``train_extras()``
for values logged with each train row, and ``checkpoint_state()`` / ``load_checkpoint_state(state)`` so that a resumed
run continues the same data streams.

Randomness: the train/validation split uses ``data.split_seed`` (task randomness); the shuffling order of epoch e
uses a generator seeded from (run seed, e), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hydra.utils
import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rnnrepro.schema import require
from rnnrepro.tasks import TaskType


# ------------------------------------------------------------------------------------------------- config schema
@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    download: bool = True
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    split_seed: int = 0  # task randomness (validation split, generated sets), independent of the run seed

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        require(self.num_workers >= 0, "data.num_workers", f"must be >= 0 (0: load in the main process), got "
                f"{self.num_workers}")
        require(0 <= self.split_seed < 2**63, "data.split_seed", f"must be in [0, 2**63 - 1] (torch's seed range), got "
                f"{self.split_seed}")


@dataclass
class SplitDataConfig(DataConfig):
    """A dataset whose validation set is carved from its official training set."""

    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")


@dataclass
class GeneratedDataConfig(DataConfig):
    """A generated task: fixed, seeded train / validation / test sets (seeded by data.split_seed)."""

    n_train: int = 100_000
    n_val: int = 10_000
    n_test: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_train", "n_val", "n_test"):
            require(getattr(self, key) >= 1, f"data.{key}", f"must be >= 1, got {getattr(self, key)}")


class DataNotFoundError(FileNotFoundError):
    """Dataset files are missing and could not be downloaded; the message says what to place where."""


@dataclass
class DataSpec:
    input_size: int
    output_size: int
    task: TaskType
    seq_len: int | None = None
    vocab_size: int | None = None  # set for token inputs (an embedding of size input_size is added)
    # token inputs only: "embedding" (nn.Embedding(vocab_size, input_size)) or "one_hot" (a parameter-free one-hot
    # encoder; input_size == vocab_size), as the OK paper feeds characters straight into W
    input_encoding: str = "embedding"
    metric: str = "acc"
    labels: list | None = None  # tag names (IOB), for span-level F1
    # classify_last: ce | softmax_mse (the SBO-RNN code's HAR-2 loss); multilabel_each: frame_mean | piece_sum
    loss: str = "ce"
    # Which validation result is "best": ((name, "max"|"min"), ...) compared in order, over the task's metrics and
    # eval_extras(). Empty: the task's metric alone. The copy task's bpc is measured at a T that grows, so it selects
    # on the curriculum T first.
    selection: tuple = ()


def resolve_root(root: str | None) -> str:
    return os.path.abspath(os.path.expanduser(root or os.path.join("~", ".cache", "rnnrepro")))


class SequenceDataModule:
    spec: DataSpec
    # Training batches continue one another (language-model streams): the final state of a batch seeds the next.
    carry_state: bool = False
    # Evaluation batches continue one another too; None means "same as carry_state".
    eval_carry_state: bool | None = None
    # The training stream never restarts (the string-memorisation streams): keep the state across epochs, which are
    # only logging units. False: every epoch starts from a zero state.
    continuous_stream: bool = False

    def __init__(self, cfg: Any, run_seed: int) -> None:
        self.cfg = cfg
        self.run_seed = run_seed
        self.root = resolve_root(cfg.root)

    def setup(self) -> None:
        raise NotImplementedError

    def num_train_batches(self, epoch: int = 0) -> int:
        raise NotImplementedError

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterator[dict]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies the data of this run (permutation hash, split sizes, preprocessing) for summary.json."""
        return {"name": self.cfg.name}

    def checkpoint_state(self) -> dict:
        """Tensors that define the task (e.g. the permutation), saved with every checkpoint; modules with mutable
        stream state (the string-memorisation curriculum) return it here too."""
        return {}

    def load_checkpoint_state(self, state: dict) -> None:
        """Restores what :meth:`checkpoint_state` returned (called on resume, after ``setup``), so that a resumed run
        continues the same streams. Default: nothing to restore (the state is rebuilt by ``setup``)."""

    def observe(self, step_losses: Tensor) -> None:
        """Called by the trainer after each training batch with a (L,) tensor: the batch-mean cross-entropy in nats
        of each of the L steps of that batch, in order. Task-side feedback such as a curriculum updates here, so
        that every training algorithm can use it. A module may also accept the unreduced per-stream (B, L) losses
        (string_memo needs them for ``data.curriculum.metric=recall_positions``). Default: ignored."""

    def train_extras(self) -> dict[str, float]:
        """Extra values logged with each train row (e.g. ``curriculum_T``). Default: none."""
        return {}

    def eval_extras(self, split: str) -> dict[str, float]:
        """Extra values logged with each evaluation of ``split`` (e.g. the ``curriculum_T`` it was measured at)."""
        return {}


def split_train_val(n: int, val_fraction: float, split_seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = int(round(n * val_fraction))
    return order[n_val:].sort().values, order[:n_val].sort().values


def epoch_seed(run_seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([run_seed, epoch]).generate_state(1)[0])


class _IndexBatches(Sampler):
    def __init__(self, batches: list[Tensor]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return (b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _BatchDataset(Dataset):
    """Indexed with a list of sample indices; builds a whole batch in one vectorised call."""

    def __init__(self, make_batch: Callable[[Tensor], dict]) -> None:
        self.make_batch = make_batch

    def __getitem__(self, indices: list[int]) -> dict:
        return self.make_batch(torch.as_tensor(indices))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


class InMemorySequenceData(SequenceDataModule):
    """A data module whose splits are index sets into tensors held in memory; subclasses set ``self.splits`` to
    {split: index tensor} and implement ``make_batch(indices)``."""

    splits: dict[str, Tensor]

    def make_batch(self, indices: Tensor) -> dict:
        raise NotImplementedError

    def _loader(self, batches: list[Tensor], seed: int) -> DataLoader:
        # A private generator: creating the loader never draws from the global torch RNG, so a run resumed in the
        # middle of an epoch sees the same random streams as an uninterrupted one.
        workers = int(self.cfg.num_workers)
        return DataLoader(_BatchDataset(self.make_batch), sampler=_IndexBatches(batches), batch_size=None,
                          num_workers=workers, worker_init_fn=_seed_worker if workers else None,
                          generator=torch.Generator().manual_seed(seed))

    def num_train_batches(self, epoch: int = 0) -> int:
        return -(-len(self.splits["train"]) // int(self.cfg.batch_size))

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        idx = self.splits["train"]
        seed = epoch_seed(self.run_seed, epoch)
        order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))]
        batches = list(order.split(int(self.cfg.batch_size)))[start_batch:]
        return iter(self._loader(batches, seed))

    def eval_batches(self, split: str) -> Iterator[dict]:
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}; have {sorted(self.splits)}")
        return iter(self._loader(list(self.splits[split].split(int(self.cfg.eval_batch_size))), self.run_seed))


def build_datamodule(data_cfg: Any, run_seed: int) -> SequenceDataModule:
    cls = hydra.utils.get_class(data_cfg._target_)
    if not issubclass(cls, SequenceDataModule):
        raise TypeError(f"data._target_={data_cfg._target_} is not a rnnrepro.data.base.SequenceDataModule")
    return cls(data_cfg, run_seed)
