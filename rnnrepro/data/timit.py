"""TIMIT next-frame prediction (MomentumRNN Table 2), bring your own data: TIMIT is LDC-licensed and has no public
download.

Expected preprocessing (the stwisdom/urnn pipeline the MomentumRNN spec describes): 8 kHz audio, STFT with N = 256,
periodic Hann window, hop 128 -> 129 bins, features 10 log10(1e-5 + |X|^2) (log magnitude). Predict frame t+1 from
frames 1..t; MSE over the unmasked (frame, bin) elements.

Files: ``<root>/timit/{train,val,test}.pt``, each saved with ``torch.save`` as ``{"x": (N, T, 129) float tensor,
"lengths": (N,) int tensor}`` (a 2-tuple ``(x, lengths)`` is accepted too); the exact layout of the MomentumRNN .pt
files is not found, so this is the harness's documented format. ``data.swap_val_test=true`` reproduces the MomentumRNN
code's naming swap (its "test" split is urnn's 400-utterance dev set, its "val" the 192-utterance core test set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnrepro.data.base import DataConfig, DataNotFoundError, DataSpec, InMemorySequenceData
from rnnrepro.schema import register_schema
from rnnrepro.tasks import TaskType

BINS = 129


# ------------------------------------------------------------------------------------------------- config schema
@register_schema("data", "timit")
@dataclass
class TIMITDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.timit.TIMIT"
    name: str = "timit"
    swap_val_test: bool = False


def load_timit_split(path: str) -> tuple[Tensor, Tensor]:
    """One split's (x, lengths); a file that is not this format (corrupt, truncated, other contents) is named."""
    from rnnrepro.data.lm import ChecksumError, unreadable

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file; all are reported alike
        if "Weights only load failed" in str(err):  # torch's advice to unpickle arbitrary code does not apply here
            err = type(err)("not a torch.save file of tensors only")
        raise unreadable(path, "a torch.save file of {'x', 'lengths'}", err,
                         fix="rewrite it from your TIMIT copy as rnnrepro/data/timit.py describes") from None
    expected = (f"Expected {{'x': (N, T, {BINS}) float, 'lengths': (N,) int in 2..T}} (rnnrepro/data/timit.py). "
                "Nothing was deleted. Fix: rewrite the file in that format")
    try:
        x, lengths = (data["x"], data["lengths"]) if isinstance(data, dict) else data
        x, lengths = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(lengths, dtype=torch.long)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ChecksumError(f"{path} holds {type(data).__name__} without the expected tensors ({err}). "
                            f"{expected}.") from None
    if x.dim() != 3 or x.shape[-1] != BINS or lengths.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ChecksumError(f"{path}: x has shape {tuple(x.shape)} and lengths {tuple(lengths.shape)}. {expected}.")
    if int(lengths.min()) < 2 or int(lengths.max()) > x.shape[1]:
        raise ChecksumError(f"{path}: lengths range over {int(lengths.min())}..{int(lengths.max())}, but x holds "
                            f"{x.shape[1]} frames and a target needs 2. {expected}.")
    if not bool(torch.isfinite(x).all()):
        raise ChecksumError(f"{path}: x holds NaN or infinite values. {expected}.")
    return x, lengths


class TIMIT(InMemorySequenceData):
    spec = DataSpec(input_size=BINS, output_size=BINS, task=TaskType.regression_each, metric="mse")

    def setup(self) -> None:
        folder = os.path.join(self.root, "timit")
        names = {"train": "train", "val": "test" if self.cfg.swap_val_test else "val",
                 "test": "val" if self.cfg.swap_val_test else "test"}
        paths = {split: os.path.join(folder, f"{name}.pt") for split, name in names.items()}
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise DataNotFoundError(
                f"TIMIT is licensed (LDC) and cannot be downloaded; missing: {', '.join(missing)}.\nFix: preprocess "
                "your TIMIT copy as rnnrepro/data/timit.py describes (8 kHz, STFT 256 / hop 128, log magnitude, 129 "
                f"bins) and save {{'x': (N, T, 129), 'lengths': (N,)}} per split as train.pt, val.pt, test.pt in "
                f"{folder}, or point data.root (or RNNREPRO_DATA) at the folder that holds timit/.")
        xs, lengths, self.splits, start = [], [], {}, 0
        for split, path in paths.items():
            x, n = load_timit_split(path)
            xs.extend(x.unbind(0))
            lengths.append(n)
            self.splits[split] = torch.arange(start, start + len(n))
            start += len(n)
        self.utterances, self.lengths = xs, torch.cat(lengths)

    def make_batch(self, indices: Tensor) -> dict:
        rows = indices.tolist()
        steps = int(self.lengths[indices].max()) - 1
        x = torch.zeros(len(rows), steps, BINS)
        y = torch.zeros(len(rows), steps, BINS)
        mask = torch.zeros(len(rows), steps, dtype=torch.bool)
        for b, i in enumerate(rows):
            n = int(self.lengths[i]) - 1
            x[b, :n], y[b, :n], mask[b, :n] = self.utterances[i][:n], self.utterances[i][1 : n + 1], True
        return {"x": x, "y": y, "mask": mask}

    def describe(self) -> dict:
        return {"name": self.cfg.name, "sizes": {k: len(v) for k, v in self.splits.items()},
                "swap_val_test": bool(self.cfg.swap_val_test), "permutation_sha1": None}
