"""Sequential and permuted MNIST: 784 steps of one pixel, scanline order, optionally permuted by a named spec.

Files are read with ``torchvision.datasets.MNIST(root=data.root)`` (layout ``<root>/MNIST/raw/*-ubyte``; torchvision
holds the mirror list and the md5 of each ``.gz``). Downloading happens only when the files are missing and
``data.download=true``. Before they are read, each raw file's IDX header is checked against its size, image and
label counts against each other, and (``data.verify_checksums=true``) each file's md5 against the canonical
decompressed file. A folder that is not the official MNIST (a subset, a test fixture) declares its files' md5s in
``MNIST/raw/checksums.md5`` (``md5sum`` format) and is checked against those; summary.json records which.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor
from torchvision.datasets import MNIST

from rnnrepro.data.base import DataNotFoundError, DataSpec, InMemorySequenceData, SplitDataConfig, split_train_val
from rnnrepro.data.lm import ChecksumError, md5sum
from rnnrepro.data.permutations import NAMED_PERMUTATIONS, build_permutation, permutation_sha1
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# md5 of the canonical decompressed files (LeCun et al.; shared/data/README.md, mnist-full row)
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
DECLARED_MD5 = "checksums.md5"


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
    verify_checksums: bool = True
    # The MomentumRNN code's protocol: train on all 60k images, no held-out split. Validation is then in-sample: a
    # seeded val_fraction of the training images, which the model also trains on (never the test set)
    train_on_all: bool = False

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


def idx_shape(path: str, ndim: int) -> tuple[int, ...]:
    """The dims in an IDX file's header (magic 0x0000 08 <ndim>, big-endian uint32 dims), checked against the file's
    size, so that a corrupt or truncated file is named here rather than failing inside torchvision."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise ChecksumError(f"{path} is not an IDX file of {ndim}-d uint8 data (header {header[:4].hex() or 'empty'}"
                            f", expected 000008{ndim:02x}). Nothing was deleted. Fix: replace it with the canonical "
                            "file (see data.download).")
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
    if size != expected:
        raise ChecksumError(f"{path} holds {size} bytes but its header {dims} needs {expected}: truncated or "
                            "corrupt. Nothing was deleted. Fix: replace it with the canonical file.")
    return dims


def _declared_md5(raw: str) -> dict[str, str] | None:
    path = os.path.join(raw, DECLARED_MD5)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [line.split(None, 1) for line in f if line.strip()]
    if any(len(parts) != 2 for parts in lines):
        raise ChecksumError(f"{path}: each line must be '<md5>  <file name>' (md5sum format). Fix the file, or "
                            "remove it to check against the canonical MNIST.")
    return {name.strip().lstrip("*"): md5 for md5, name in lines}


def check_mnist_files(root: str, verify: bool) -> str:
    """Checks the four raw files (headers, counts, md5s) before anything reads them; returns what they were
    checked against: "canonical", "declared in MNIST/raw/checksums.md5" or "not checked"."""
    raw = os.path.join(root, "MNIST", "raw")
    for prefix in ("train", "t10k"):
        images = idx_shape(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), 3)
        labels = idx_shape(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), 1)
        if images[1:] != (28, 28) or images[0] != labels[0]:
            raise ChecksumError(f"{raw}: {prefix}-images holds {images[0]} images of {images[1:]} and {prefix}-labels "
                                f"{labels[0]} labels; they must be 28x28 and as many (a file swapped or replaced?). "
                                "Nothing was deleted. Fix: replace them with the canonical files.")
    if not verify:
        return "not checked (data.verify_checksums=false)"
    declared = _declared_md5(raw)
    expected = declared if declared is not None else MNIST_RAW_MD5
    for name in MNIST_RAW_MD5:
        path = os.path.join(raw, name)
        if name not in expected:
            raise ChecksumError(f"{os.path.join(raw, DECLARED_MD5)} declares no md5 for {name}. Fix: add its line "
                                "(md5sum format), or remove the file to check against the canonical MNIST.")
        found = md5sum(path)
        if found != expected[name]:
            against = f"the md5 declared in {DECLARED_MD5}" if declared is not None else "the canonical MNIST"
            raise ChecksumError(f"{path} differs from {against} (md5 {found}, expected {expected[name]}). Nothing "
                                "was deleted. Fix: replace it, or set data.verify_checksums=false to use it as it "
                                "is (recorded in summary.json).")
    return f"declared in MNIST/raw/{DECLARED_MD5}" if declared is not None else "canonical"


def load_mnist(root: str, download: bool, verify: bool = True) -> tuple[MNIST, MNIST, str]:
    raw = os.path.join(root, "MNIST", "raw")
    present = all(os.path.exists(os.path.join(raw, name)) for name in MNIST_RAW_MD5)
    checked = check_mnist_files(root, verify) if present else None
    try:
        train, test = MNIST(root, train=True, download=download), MNIST(root, train=False, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found" or "Error downloading ..."
        raise DataNotFoundError(mnist_files_message(root, download, err)) from err
    return train, test, checked or check_mnist_files(root, verify)  # just downloaded: check what was written


class SequentialMNIST(InMemorySequenceData):
    """Pixel MNIST: 784 steps x 1 pixel. ``data.pixels_per_step`` > 1 feeds consecutive pixels of the (permuted)
    scanline together, e.g. 28 for row-by-row MNIST (28 steps x 28); the papers here use 1."""

    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        k = int(cfg.pixels_per_step)
        self.spec = DataSpec(input_size=k, output_size=10, task=TaskType.classify_last, seq_len=784 // k, metric="acc")

    def setup(self) -> None:
        train, test, self.files_checked = load_mnist(self.root, bool(self.cfg.download),
                                                     bool(self.cfg.verify_checksums))
        self.permutation = build_permutation(self.cfg.permutation, 784, run_seed=self.run_seed)
        # Pixels stay uint8 in memory (47 MB for 60k images); normalisation happens per batch.
        images = torch.cat([train.data.reshape(-1, 784), test.data.reshape(-1, 784)])[:, self.permutation]
        self.images = images.contiguous()
        self.labels = torch.cat([train.targets, test.targets]).long()
        n_train = len(train.targets)
        train_idx, val_idx = split_train_val(n_train, float(self.cfg.val_fraction), int(self.cfg.split_seed))
        if self.cfg.get("train_on_all", False):
            train_idx = torch.arange(n_train)  # val_idx stays a subset of it: in-sample validation
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
                "split_seed": int(self.cfg.split_seed), "files_checked": self.files_checked,
                "train_on_all": bool(self.cfg.get("train_on_all", False)),
                "sizes": {k: len(v) for k, v in self.splits.items()}}

    def checkpoint_state(self) -> dict:
        return {"permutation": self.permutation.clone()}
