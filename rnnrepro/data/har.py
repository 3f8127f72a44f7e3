"""HAR-2: UCI Human Activity Recognition Using Smartphones, regrouped into two classes (FastGRNN line).

Input: the 2.56 s windows (128 steps at 50 Hz) of the nine raw inertial signals, channels in the order body_acc xyz,
body_gyro xyz, total_acc xyz [inference: the order is not found], read from
``<root>/UCI HAR Dataset/{train,test}/Inertial Signals/<signal>_{train,test}.txt``; 7,352 train / 2,947 test windows.
Labels: the six activities merged as {Sitting, Laying, Walking_Upstairs} -> 1 and {Standing, Walking,
Walking_Downstairs} -> 0 [web: FastGRNN blog]; which group is 1 is not found (harness choice). Each channel is
standardised with the mean and std of the training split (after the validation split is carved out of it).

Validation (``data.val_split``): ``subject`` (default) holds out whole subjects of the training set, about
``val_fraction`` of the 21; ``window`` draws windows at random. The windows overlap by 50% and each subject gives
hundreds of them, so a window split puts near-copies of validation windows into training and its validation accuracy
is optimistic. ``data.train_fraction`` keeps a seeded random subset of the remaining training windows (SBO-RNN's 1% and
10% data-efficiency curves); validation and test stay whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from rnnrepro.data.base import DataNotFoundError, DataSpec, InMemorySequenceData, SplitDataConfig, split_train_val
from rnnrepro.data.lm import ChecksumError, unreadable
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

HAR_FOLDER = "UCI HAR Dataset"
HAR_URLS = ["https://archive.ics.uci.edu/ml/machine-learning-databases/00240/UCI%20HAR%20Dataset.zip"]
SIGNALS = [f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"]
# UCI activity ids: 1 WALKING, 2 WALKING_UPSTAIRS, 3 WALKING_DOWNSTAIRS, 4 SITTING, 5 STANDING, 6 LAYING
HAR2_POSITIVE = (2, 4, 6)


# ------------------------------------------------------------------------------------------------- config schema
class ClassifyLoss(str, Enum):
    ce = "ce"
    softmax_mse = "softmax_mse"  # SBO-RNN code comment for HAR-2: softmax, then MSE against the one-hot target


class HARValSplit(str, Enum):
    subject = "subject"  # whole subjects held out (no overlapping windows shared with training)
    window = "window"    # random windows (optimistic: overlapping windows of the same subjects on both sides)


@register_schema("data", "har2")
@dataclass
class HAR2DataConfig(SplitDataConfig):
    _target_: str = "rnnrepro.data.har.HAR2"
    name: str = "har2"
    loss: ClassifyLoss = ClassifyLoss.softmax_mse
    head_outputs: int | None = None  # None: 2 classes; 10: the SBO-RNN code's hard-wired 10-way head
    val_split: HARValSplit = HARValSplit.subject
    train_fraction: float = 1.0  # a seeded subset (data.split_seed) of the training windows left after validation
    verify_checksums: bool = True  # the release's window counts (7,352 / 2,947): no checksum is published

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.head_outputs is None or self.head_outputs >= 2, "data.head_outputs",
                 f"must be >= 2 (the two HAR-2 classes) or null, got {self.head_outputs}")
        require(0 < self.train_fraction <= 1, "data.train_fraction",
                f"must be in (0, 1], got {self.train_fraction} (e.g. data.train_fraction=0.01 for 1%)")


def har_files(root: str, split: str) -> list[str]:
    """The nine signal files, then the activity labels, then the subject ids of ``split``."""
    base = os.path.join(root, HAR_FOLDER, split)
    return [os.path.join(base, "Inertial Signals", f"{s}_{split}.txt") for s in SIGNALS] + \
        [os.path.join(base, f"y_{split}.txt"), os.path.join(base, f"subject_{split}.txt")]


def ensure_har(root: str, download: bool) -> None:
    missing = [p for split in ("train", "test") for p in har_files(root, split) if not os.path.exists(p)]
    if missing and download:
        from torchvision.datasets.utils import download_and_extract_archive

        for url in HAR_URLS:
            try:  # no checksum is published for this archive
                download_and_extract_archive(url, root, filename="UCI HAR Dataset.zip")
                break
            except Exception:  # noqa: BLE001, S112 - the error below says what to do
                continue
        missing = [p for split in ("train", "test") for p in har_files(root, split) if not os.path.exists(p)]
    if missing:
        shown = "\n".join(f"  {p}" for p in missing[:4]) + ("\n  ..." if len(missing) > 4 else "")
        raise DataNotFoundError(f"UCI HAR files are missing:\n{shown}\nSource: {HAR_URLS[0]} (unzip it into "
                                f"data.root so that {os.path.join(root, HAR_FOLDER)} exists). Fix: place the files, "
                                "point data.root (or RNNREPRO_DATA) there, or set data.download=true.")


HAR_WINDOWS = {"train": 7_352, "test": 2_947}  # the canonical release (no checksum is published)


def _read_table(path: str, integer: bool) -> np.ndarray:
    """One whitespace-separated text file of the release; unreadable or empty files are named."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "empty input file": reported below
            table = np.loadtxt(path, dtype=np.int64 if integer else np.float32, ndmin=2 if not integer else 1)
    except (ValueError, UnicodeDecodeError) as err:
        raise unreadable(path, "UCI HAR text (whitespace-separated numbers, one window per row)", err) from None
    if table.shape[0] == 0:
        raise ChecksumError(f"{path} is empty. Nothing was deleted. Fix: replace it with the release's file (see "
                            "data.download), or point data.root elsewhere.")
    return table


def read_split(root: str, split: str, verify_sizes: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """(signals (N, 128, 9), activity ids (N,), subject ids (N,)). Every file must hold N rows (128 numbers each for
    the signals), activities must be 1..6; with ``verify_sizes`` N must be the release's (7,352 / 2,947), which also
    catches the train and test files swapped."""
    paths = har_files(root, split)
    tables = [_read_table(p, integer=False) for p in paths[:-2]]
    activities, subjects = (_read_table(p, integer=True).reshape(-1) for p in paths[-2:])
    n = len(activities)
    fix = "Nothing was deleted. Fix: replace it with the release's file, or point data.root elsewhere."
    for path, table in zip(paths[:-2], tables):
        if table.shape != (n, 128):
            raise ChecksumError(f"{path} holds {table.shape[0]} rows x {table.shape[1]} numbers; {paths[-2]} has {n} "
                                f"labels, so {n} rows x 128 were expected (a truncated or swapped file). {fix}")
    if len(subjects) != n:
        raise ChecksumError(f"{paths[-1]} holds {len(subjects)} subject ids for the {n} labels of {paths[-2]}. {fix}")
    if not np.isin(activities, np.arange(1, 7)).all():
        bad = sorted(set(activities.tolist()) - set(range(1, 7)))[:5]
        raise ChecksumError(f"{paths[-2]} holds activity ids {bad}, outside 1..6 (a swapped or corrupt file). {fix}")
    if verify_sizes and n != HAR_WINDOWS[split]:
        raise ChecksumError(f"{paths[-2]} has {n} windows; the release's {split} split has {HAR_WINDOWS[split]} "
                            "(a truncated or swapped file, or not UCI HAR). Nothing was deleted. Fix: replace it, or "
                            "set data.verify_checksums=false.")
    return torch.from_numpy(np.stack(tables, axis=-1)), torch.from_numpy(activities), torch.from_numpy(subjects)


def split_by_subject(subjects: Tensor, val_fraction: float, split_seed: int) -> tuple[Tensor, Tensor, list[int]]:
    """(train indices, validation indices, validation subjects): round(val_fraction x #subjects) whole subjects,
    drawn with ``split_seed`` (at least one, and at least one left for training)."""
    ids = subjects.unique()
    order = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(split_seed))]
    n_val = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
    held_out = order[:n_val].sort().values
    is_val = torch.isin(subjects, held_out)
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten(), held_out.tolist()


def subset(indices: Tensor, fraction: float, seed: int) -> Tensor:
    """A seeded random ``fraction`` of ``indices`` (at least one), in index order."""
    if fraction >= 1:
        return indices
    keep = max(1, int(round(len(indices) * fraction)))
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))
    return indices[order[:keep]].sort().values


class HAR2(InMemorySequenceData):
    spec = DataSpec(input_size=9, output_size=2, task=TaskType.classify_last, seq_len=128, metric="acc")

    def setup(self) -> None:
        loss = str(getattr(self.cfg.loss, "value", self.cfg.loss))
        # head_outputs=10 reproduces the SBO-RNN code's head, hard-wired to 10 classes for this 2-class task
        self.spec = replace(HAR2.spec, output_size=int(self.cfg.head_outputs or 2), loss=loss)
        ensure_har(self.root, bool(self.cfg.download))
        verify = bool(self.cfg.verify_checksums)
        (x_train, a_train, s_train), (x_test, a_test, _) = (read_split(self.root, split, verify)
                                                            for split in ("train", "test"))
        val_fraction, seed = float(self.cfg.val_fraction), int(self.cfg.split_seed)
        self.val_split = str(getattr(self.cfg.val_split, "value", self.cfg.val_split))
        if self.val_split == "subject":
            train_idx, val_idx, self.val_subjects = split_by_subject(s_train, val_fraction, seed)
        else:
            train_idx, val_idx = split_train_val(len(a_train), val_fraction, seed)
            self.val_subjects = None
        train_idx = subset(train_idx, float(self.cfg.train_fraction), seed)
        flat = x_train[train_idx].reshape(-1, 9)
        self.mean, self.std = flat.mean(0), flat.std(0)  # training statistics only
        x = (torch.cat([x_train, x_test]) - self.mean) / self.std
        activities = torch.cat([a_train, a_test])
        self.x, self.activities = x, activities
        self.y = torch.isin(activities, torch.tensor(HAR2_POSITIVE)).long()
        n = len(a_train)
        self.splits = {"train": train_idx, "val": val_idx, "test": torch.arange(n, len(activities))}

    def make_batch(self, indices: Tensor) -> dict:
        return {"x": self.x[indices], "y": self.y[indices]}

    def describe(self) -> dict:
        return {"name": self.cfg.name, "sizes": {k: len(v) for k, v in self.splits.items()},
                "positive_activities": list(HAR2_POSITIVE), "channels": SIGNALS,
                "split_seed": int(self.cfg.split_seed), "permutation_sha1": None, "loss": self.spec.loss,
                "head_outputs": self.spec.output_size, "val_split": self.val_split, "val_subjects": self.val_subjects,
                "train_fraction": float(self.cfg.train_fraction)}
