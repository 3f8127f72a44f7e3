"""Sequential and permuted MNIST: 784 steps of one pixel, scanline order, optionally permuted by a named spec.

Files are read with ``torchvision.datasets.MNIST(root=data.root)`` (layout ``<root>/MNIST/raw/*-ubyte``; torchvision
holds the mirror list and the md5 of each file). Downloading happens only when the files are missing and
``data.download=true``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor
from torchvision.datasets import MNIST

from rnnrepro.data.base import DataNotFoundError, DataSpec, InMemorySequenceData, SplitDataConfig, split_train_val
from rnnrepro.data.permutations import NAMED_PERMUTATIONS, build_permutation, permutation_sha1
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# ------------------------------------------------------------------------------------------------- config schema
class Normalize(str, Enum):
    none = "none"
    mean_std = "mean_std"
    repo_bug_uint8 = "repo_bug_uint8"


@register_schema("data", "mnist")
@dataclass
class MNISTDataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.mnist.SequentialMNIST"
    name: str = "smnist"
    permutation: str = "identity"
    normalize: Normalize = Normalize.mean_std
    pixels_per_step: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.pixels_per_step >= 1 and 784 % self.pixels_per_step == 0, "data.pixels_per_step",
                 f"must divide 784 (1, 2, 4, 7, 14, 16, 28, ...), got {self.pixels_per_step}")
        from rnnrepro.data.permutations import check_permutation_name

        check_permutation_name(self.permutation)


def mnist_files_message(root: str, download: bool, cause: Exception | None = None) -> str:
    raw = os.path.join(root, "MNIST", "raw")
    files = "\n".join(f"  {os.path.join(raw, name[:-3])}  (or {name}, md5 {md5})" for name, md5 in MNIST.resources)
    urls = "\n".join(f"  {mirror}{name}" for name, _ in MNIST.resources for mirror in MNIST.mirrors)
    what = "could not be downloaded" if download else "are missing and data.download=false"
    reason = f"\nCause: {cause}" if cause else ""
    return (f"MNIST files {what}. Expected:\n{files}\nDownload URLs (mirrors tried in order):\n{urls}\n"
            f"Fix: place the files there, or point data.root (or the RNNREPRO_DATA environment variable) at a folder "
            f"that contains MNIST/raw, or set data.download=true on a machine with network access.{reason}")


def load_mnist(root: str, download: bool) -> tuple[MNIST, MNIST]:
    try:
        return (MNIST(root, train=True, download=download), MNIST(root, train=False, download=download))
    except RuntimeError as err:  # torchvision: "Dataset not found" or "Error downloading ..."
        raise DataNotFoundError(mnist_files_message(root, download, err)) from err


class SequentialMNIST(InMemorySequenceData):
    """Pixel MNIST: 784 steps x 1 pixel. ``data.pixels_per_step`` > 1 feeds consecutive pixels of the (permuted)
    scanline together, e.g. 28 for row-by-row MNIST (28 steps x 28); the papers here use 1."""

    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        k = int(cfg.pixels_per_step)
        self.spec = DataSpec(input_size=k, output_size=10, task=TaskType.classify_last, seq_len=784 // k, metric="acc")

    def setup(self) -> None:
        train, test = load_mnist(self.root, bool(self.cfg.download))
        self.permutation = build_permutation(self.cfg.permutation, 784, run_seed=self.run_seed)
        # Pixels stay uint8 in memory (47 MB for 60k images); normalisation happens per batch.
        images = torch.cat([train.data.reshape(-1, 784), test.data.reshape(-1, 784)])[:, self.permutation]
        self.images = images.contiguous()
        self.labels = torch.cat([train.targets, test.targets]).long()
        n_train = len(train.targets)
        train_idx, val_idx = split_train_val(n_train, float(self.cfg.val_fraction), int(self.cfg.split_seed))
        self.splits = {"train": train_idx, "val": val_idx, "test": torch.arange(n_train, len(self.labels))}

    def normalise(self, pixels: Tensor) -> Tensor:
        x = pixels.float()
        mode = str(getattr(self.cfg.normalize, "value", self.cfg.normalize))
        if mode == "mean_std":
            return (x / 255.0 - MNIST_MEAN) / MNIST_STD
        if mode == "none":
            return x / 255.0
        return (x - MNIST_MEAN) / MNIST_STD  # repo_bug_uint8: SBO-RNN code's constants on 0..255 pixels

    def make_batch(self, indices: Tensor) -> dict:
        x = self.normalise(self.images[indices]).view(len(indices), self.spec.seq_len, self.spec.input_size)
        return {"x": x, "y": self.labels[indices]}

    def describe(self) -> dict:
        name = self.cfg.permutation
        return {"name": self.cfg.name, "permutation": name,
                "permutation_sha1": permutation_sha1(self.permutation),
                "permutation_spec": NAMED_PERMUTATIONS[name].describe(),
                "normalize": str(getattr(self.cfg.normalize, "value", self.cfg.normalize)),
                "pixels_per_step": self.spec.input_size,
                "split_seed": int(self.cfg.split_seed),
                "sizes": {k: len(v) for k, v in self.splits.items()}}

    def checkpoint_state(self) -> dict:
        return {"permutation": self.permutation.clone()}
