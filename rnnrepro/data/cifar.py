"""CIFAR-10 as sequences: pixel-by-pixel (1024 x 3) and noise-padded (1000 x 96), AntisymmetricRNN Table 2.

Files: torchvision's layout, ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (python pickles of
``data`` (N, 3072) uint8 and ``labels``), each checked against torchvision's md5 list. The archive is fetched with
torchvision's download utility (md5-checked) only when files are missing and ``data.download=true``.

- ``pcifar10``: one pixel (R, G, B) per step in scanline order, T = 1024.
- ``npcifar10``: one image row per step for steps 1-32 (96 = 3 channels x 32 pixels, channel-major as in coRNN),
  then 968 steps of standard Gaussian noise [paper]. ``data.noise=fresh`` (default) draws i.i.d. noise per sample
  and per epoch in training and a fixed, seeded draw per sample for validation and test (repeatable evaluation);
  ``fixed_once`` reproduces coRNN's single noise tensor shared by every sample (an easier task).

Normalisation (``data.normalize``): ``channel_mean_std`` with the per-channel mean and std of the training split
(after the validation split), or ``none`` (x / 255). The papers do not state it [not found]. The noise is not
normalised.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10

from rnnrepro.data.base import (
    DataNotFoundError,
    DataSpec,
    InMemorySequenceData,
    SplitDataConfig,
    epoch_seed,
    split_train_val,
)
from rnnrepro.data.lm import ChecksumError, md5sum, unreadable
from rnnrepro.schema import register_schema
from rnnrepro.tasks import TaskType

NOISE_STEPS, ROWS = 968, 32


# ------------------------------------------------------------------------------------------------- config schema
class CIFARNormalize(str, Enum):
    channel_mean_std = "channel_mean_std"
    none = "none"


class NoiseMode(str, Enum):
    fresh = "fresh"
    fixed_once = "fixed_once"


@register_schema("data", "cifar")
@dataclass
class CIFARDataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.cifar.PixelCIFAR10"
    name: str = "pcifar10"
    val_fraction: float = 0.1
    normalize: CIFARNormalize = CIFARNormalize.channel_mean_std
    verify_checksums: bool = True


@register_schema("data", "noisy_cifar")
@dataclass
class NoisyCIFARDataConfig(CIFARDataConfig):
    _target_: str = "rnnrepro.data.cifar.NoisyCIFAR10"
    name: str = "npcifar10"
    noise: NoiseMode = NoiseMode.fresh


def cifar_files(root: str) -> dict[str, str]:
    folder = os.path.join(root, CIFAR10.base_folder)
    return {name: os.path.join(folder, name) for name, _ in CIFAR10.train_list + CIFAR10.test_list}


def load_cifar(root: str, download: bool, verify: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(images (N, 3, 32, 32) uint8, labels (N,), number of training images); training batches first."""
    paths = cifar_files(root)
    if any(not os.path.exists(p) for p in paths.values()) and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10.url, root, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as err:  # noqa: BLE001 - reported with the manual fix below
            raise DataNotFoundError(f"could not download {CIFAR10.url}: {err}\nFix: extract "
                                    f"{CIFAR10.filename} (md5 {CIFAR10.tgz_md5}) into {root}.") from err
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise DataNotFoundError(
            f"CIFAR-10 files are missing: {', '.join(missing)}.\nSource: {CIFAR10.url} (md5 {CIFAR10.tgz_md5}); "
            f"extract it into data.root so that {os.path.dirname(missing[0])} exists. Fix: place the files, point "
            "data.root (or RNNREPRO_DATA) there, or set data.download=true with network access.")
    images, labels, n_train = [], [], 0
    for name, md5 in CIFAR10.train_list + CIFAR10.test_list:
        if verify and md5sum(paths[name]) != md5:
            raise ChecksumError(f"{paths[name]} differs from the canonical release (md5 {md5sum(paths[name])}, "
                                f"expected {md5}). Nothing was deleted. Fix: replace it, or set "
                                "data.verify_checksums=false.")
        try:
            with open(paths[name], "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data, batch_labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
        except Exception as err:  # noqa: BLE001 - a damaged pickle raises many types; all are reported alike
            raise unreadable(paths[name], "a CIFAR-10 python batch (a pickled dict of data, labels)", err) from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or batch_labels.shape != (len(data),) \
                or not np.isin(batch_labels, np.arange(10)).all():
            raise ChecksumError(f"{paths[name]} holds data {data.dtype} {data.shape} and {batch_labels.shape[0]} "
                                "labels; a CIFAR-10 batch holds uint8 (N, 3072) and N labels in 0..9. Nothing was "
                                "deleted. Fix: replace it with the release's file.")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
        if name != "test_batch":
            n_train += len(labels[-1])
    return np.concatenate(images), np.concatenate(labels), n_train


class PixelCIFAR10(InMemorySequenceData):
    spec = DataSpec(input_size=3, output_size=10, task=TaskType.classify_last, seq_len=1024, metric="acc")

    def setup(self) -> None:
        images, labels, n_train = load_cifar(self.root, bool(self.cfg.download), bool(self.cfg.verify_checksums))
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        train_idx, val_idx = split_train_val(n_train, float(self.cfg.val_fraction), int(self.cfg.split_seed))
        self.splits = {"train": train_idx, "val": val_idx, "test": torch.arange(n_train, len(labels))}
        if str(getattr(self.cfg.normalize, "value", self.cfg.normalize)) == "channel_mean_std":
            pixels = self.images[train_idx].float().div_(255.0)
            self.mean, self.std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))  # training statistics
        else:
            self.mean, self.std = torch.zeros(3), torch.ones(3)

    def normalised(self, indices: Tensor) -> Tensor:
        x = self.images[indices].float().div_(255.0)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]  # (B, 3, 32, 32)

    def make_batch(self, indices: Tensor) -> dict:
        x = self.normalised(indices).permute(0, 2, 3, 1).reshape(len(indices), 1024, 3)  # scanline, RGB per step
        return {"x": x, "y": self.labels[indices]}

    def describe(self) -> dict:
        return {"name": self.cfg.name, "sizes": {k: len(v) for k, v in self.splits.items()},
                "normalize": str(getattr(self.cfg.normalize, "value", self.cfg.normalize)),
                "split_seed": int(self.cfg.split_seed), "permutation_sha1": None}


class NoisyCIFAR10(PixelCIFAR10):
    spec = DataSpec(input_size=96, output_size=10, task=TaskType.classify_last, seq_len=ROWS + NOISE_STEPS,
                    metric="acc")

    def setup(self) -> None:
        super().setup()
        self.noise_mode = str(getattr(self.cfg.noise, "value", self.cfg.noise))
        self.evaluation = torch.zeros(len(self.labels), dtype=torch.bool)
        self.evaluation[self.splits["val"]] = True
        self.evaluation[self.splits["test"]] = True
        seed = int(self.cfg.split_seed)
        self.shared_noise = torch.randn(NOISE_STEPS, 96, generator=torch.Generator().manual_seed(seed))
        self.noise_seed_base = epoch_seed(seed, 10**6)

    def _noise(self, indices: Tensor) -> Tensor:
        if self.noise_mode == "fixed_once":
            return self.shared_noise.expand(len(indices), -1, -1)
        noise = torch.randn(len(indices), NOISE_STEPS, 96)  # training: fresh per sample and per epoch
        for b, i in enumerate(indices.tolist()):
            if self.evaluation[i]:  # validation / test: the same draw for a sample every time
                generator = torch.Generator().manual_seed(self.noise_seed_base + i)
                noise[b] = torch.randn(NOISE_STEPS, 96, generator=generator)
        return noise

    def make_batch(self, indices: Tensor) -> dict:
        rows = self.normalised(indices).permute(0, 2, 1, 3).reshape(len(indices), ROWS, 96)  # (B, 32 rows, 3 x 32)
        return {"x": torch.cat([rows, self._noise(indices)], dim=1), "y": self.labels[indices]}

    def describe(self) -> dict:
        return {**super().describe(), "noise": self.noise_mode}
