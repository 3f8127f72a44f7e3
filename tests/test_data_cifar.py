"""Pixel and noise-padded CIFAR-10: the python-pickle layout, sequence layouts, noise properties, checksums."""

from __future__ import annotations

import pytest
import torch

from helpers import write_tiny_cifar
from rnnrepro.config import validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.lm import ChecksumError


def _data(compose_cfg, root, dataset, *overrides, seed=0):
    cfg = compose_cfg(f"dataset={dataset}", f"data.root={root}", "data.download=false",
                      "data.verify_checksums=false", *overrides)
    validate(cfg)
    data = build_datamodule(cfg.data, seed)
    data.setup()
    return data


def test_pixel_cifar_layout_and_normalisation(compose_cfg, tmp_path):
    write_tiny_cifar(tmp_path)
    data = _data(compose_cfg, tmp_path, "pcifar10")
    assert data.describe()["sizes"] == {"train": 54, "val": 6, "test": 10}
    idx = data.splits["train"][:4]
    x = data.make_batch(idx)["x"]
    assert x.shape == (4, 1024, 3)
    img = data.normalised(idx)  # (B, 3, 32, 32)
    assert torch.equal(x[:, 32 * 5 + 7], img[:, :, 5, 7])  # step = row * 32 + column, channels per step
    train = data.normalised(data.splits["train"])
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    raw = _data(compose_cfg, tmp_path, "pcifar10", "data.normalize=none").make_batch(idx)["x"]
    assert 0.0 <= raw.min() and raw.max() <= 1.0


def test_noise_padded_layout_and_fresh_noise(compose_cfg, tmp_path):
    write_tiny_cifar(tmp_path)
    data = _data(compose_cfg, tmp_path, "npcifar10")
    idx = data.splits["train"][:3]
    a, b = data.make_batch(idx)["x"], data.make_batch(idx)["x"]
    assert a.shape == (3, 1000, 96)
    img = data.normalised(idx)
    assert torch.equal(a[:, 4, :32], img[:, 0, 4, :]) and torch.equal(a[:, 4, 32:64], img[:, 1, 4, :])
    assert torch.equal(a[:, :32], b[:, :32])  # steps 1-32: the image rows
    assert not torch.equal(a[:, 32:], b[:, 32:])  # training noise is fresh per epoch ...
    assert not torch.allclose(a[0, 32:], a[1, 32:])  # ... and per sample
    noise = torch.cat([data.make_batch(idx)["x"][:, 32:] for _ in range(20)])
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1.0) < 0.01  # N(0, 1)
    test = data.splits["test"][:3]
    t1, t2 = data.make_batch(test)["x"], data.make_batch(test[[2, 0, 1]])["x"]
    assert torch.equal(t1[[2, 0, 1]], t2)  # evaluation noise is fixed per sample, whatever the batch
    assert not torch.allclose(t1[0, 32:], t1[1, 32:])


def test_fixed_once_noise_is_shared_by_all_samples(compose_cfg, tmp_path):
    write_tiny_cifar(tmp_path)
    data = _data(compose_cfg, tmp_path, "npcifar10", "data.noise=fixed_once")
    x = data.make_batch(torch.cat([data.splits["train"][:2], data.splits["test"][:2]]))["x"]
    assert all(torch.equal(x[0, 32:], x[i, 32:]) for i in range(1, 4))
    assert data.describe()["noise"] == "fixed_once"


def test_checksums_and_missing_files(compose_cfg, tmp_path):
    write_tiny_cifar(tmp_path / "fake")
    cfg = compose_cfg("dataset=pcifar10", f"data.root={tmp_path / 'fake'}", "data.download=false")
    with pytest.raises(ChecksumError, match="c99cafc152244af753f735de768cd75f"):
        build_datamodule(cfg.data, 0).setup()
    assert (tmp_path / "fake" / "cifar-10-batches-py" / "data_batch_1").exists()
    cfg = compose_cfg("dataset=npcifar10", f"data.root={tmp_path / 'none'}", "data.download=false")
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz"):
        build_datamodule(cfg.data, 0).setup()
