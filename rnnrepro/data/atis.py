"""ATIS slot filling on the five Mesnil et al. (2013, is13) folds: ``<root>/atis/atis.fold{k}.pkl.gz``.

Each file is a latin-1 pickle of ``(train, valid, test, dicts)``; each split holds three parallel lists per sentence
(word ids, named-entity ids, IOB slot-label ids); ``dicts`` has ``words2idx``, ``tables2idx`` and ``labels2idx``
(127 labels). The model reads word ids (the named-entity ids are not used) and tags every token; sentences are padded
in a batch and masked. Metric: span-level F1 over slot chunks, conlleval convention (rnnrepro/tasks/base.py).
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnrepro.data.base import DataConfig, DataNotFoundError, DataSpec, InMemorySequenceData
from rnnrepro.data.lm import ChecksumError, md5sum, unreadable
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

ATIS_MD5 = {0: "baf0182e5f8b213d5d1e9048273e0e80", 1: "9ab4ace4cec86e755fbe616ecda71c51",
            2: "6320d27077c837775a61eb865593b665", 3: "5f37e68169c4deb5c9379e4cd5eae722",
            4: "af61e793b8b44c807f58523049630dc6"}
ATIS_MIRRORS = ["http://lisaweb.iro.umontreal.ca/transfert/lisa/users/mesnilgr/atis/",
                "https://s3-eu-west-1.amazonaws.com/atis/"]


# ------------------------------------------------------------------------------------------------- config schema
@register_schema("data", "atis")
@dataclass
class ATISDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.atis.ATIS"
    name: str = "atis"
    fold: int = 0
    embedding_size: int = 128
    verify_checksums: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.fold in range(5), "data.fold", f"must be 0, 1, 2, 3 or 4, got {self.fold}")
        require(self.embedding_size >= 1, "data.embedding_size", f"must be >= 1, got {self.embedding_size}")


def atis_file(folder: str, fold: int, download: bool, verify: bool) -> str:
    name = f"atis.fold{fold}.pkl.gz"
    path = os.path.join(folder, name)
    if not os.path.exists(path) and download:
        from torchvision.datasets.utils import download_url

        for mirror in ATIS_MIRRORS:
            try:
                download_url(mirror + name, folder, filename=name, md5=ATIS_MD5[fold])
                break
            except Exception:  # noqa: BLE001, S112 - try the next mirror; the error below lists them all
                continue
    if not os.path.exists(path):
        urls = ", ".join(m + name for m in ATIS_MIRRORS)
        raise DataNotFoundError(f"{path} is missing (md5 {ATIS_MD5[fold]}). Sources: {urls}.\nFix: place the file "
                                "there, point data.root (or RNNREPRO_DATA) at a folder holding atis/, or set "
                                "data.download=true with network access.")
    if verify and md5sum(path) != ATIS_MD5[fold]:
        raise ChecksumError(f"{path} differs from the is13 release (md5 {md5sum(path)}, expected {ATIS_MD5[fold]}). "
                            "Nothing was deleted. Fix: replace it, or set data.verify_checksums=false.")
    return path


class ATIS(InMemorySequenceData):
    def setup(self) -> None:
        path = atis_file(os.path.join(self.root, "atis"), int(self.cfg.fold), bool(self.cfg.download),
                         bool(self.cfg.verify_checksums))
        try:
            with gzip.open(path, "rb") as f:
                splits = pickle.load(f, encoding="latin1")
            dicts = splits[3]
        except Exception as err:  # noqa: BLE001 - corrupt gzip, truncated pickle, another layout
            raise unreadable(path, "an is13 ATIS fold (a gzipped pickle of train, valid, test, dicts)", err) from err
        self.labels = [label for label, _ in sorted(dicts["labels2idx"].items(), key=lambda kv: kv[1])]
        self.pad = len(dicts["words2idx"])  # an extra embedding row for padding
        self.words: list[Tensor] = []
        self.tags: list[Tensor] = []
        self.splits = {}
        for split, (words, _entities, tags) in zip(("train", "val", "test"), splits[:3]):
            start = len(self.words)
            self.words.extend(torch.as_tensor(w, dtype=torch.long) for w in words)
            self.tags.extend(torch.as_tensor(t, dtype=torch.long) for t in tags)
            self.splits[split] = torch.arange(start, len(self.words))
        self.spec = DataSpec(input_size=int(self.cfg.embedding_size), output_size=len(self.labels),
                             task=TaskType.tag, vocab_size=self.pad + 1, metric="f1", labels=self.labels)

    def make_batch(self, indices: Tensor) -> dict:
        rows = indices.tolist()
        length = max(self.words[i].numel() for i in rows)
        x = torch.full((len(rows), length), self.pad, dtype=torch.long)
        y = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for b, i in enumerate(rows):
            n = self.words[i].numel()
            x[b, :n], y[b, :n], mask[b, :n] = self.words[i], self.tags[i], True
        return {"x": x, "y": y, "mask": mask}

    def describe(self) -> dict:
        return {"name": self.cfg.name, "fold": int(self.cfg.fold), "sizes": {k: len(v) for k, v in self.splits.items()},
                "vocab_size": self.pad, "labels": len(self.labels), "permutation_sha1": None}
