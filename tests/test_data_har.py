"""HAR-2: the UCI HAR text layout, the two-class regrouping, training-split standardisation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.har import SIGNALS, har_files


def write_tiny_har(root, n_train=40, n_test=12, seed=0):
    """UCI HAR's layout: one whitespace-separated text file per signal (N rows x 128), y_*.txt with ids 1..6."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        paths = har_files(str(root), split)
        activities = rng.integers(1, 7, size=n)
        for c, path in enumerate(paths[:-1]):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # channel c carries a class-dependent offset so that a model can learn the task
            signal = rng.normal(size=(n, 128)) + (np.isin(activities, (2, 4, 6)) * 2.0 - 1.0)[:, None] * (c == 0)
            np.savetxt(path, signal * (c + 1) + c, fmt="%.7e")
        np.savetxt(paths[-1], activities, fmt="%d")
    return root


def test_layout_regrouping_and_normalisation(compose_cfg, tmp_path):
    write_tiny_har(tmp_path)
    cfg = compose_cfg("dataset=har2", f"data.root={tmp_path}", "data.download=false")
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    assert data.describe()["sizes"] == {"train": 32, "val": 8, "test": 12}
    assert data.describe()["channels"] == SIGNALS and len(SIGNALS) == 9
    assert torch.equal(data.y, torch.isin(data.activities, torch.tensor([2, 4, 6])).long())
    train = data.x[data.splits["train"]].reshape(-1, 9)
    assert torch.allclose(train.mean(0), torch.zeros(9), atol=1e-4)
    assert torch.allclose(train.std(0), torch.ones(9), atol=1e-4)
    batch = next(data.train_batches(epoch=0))
    assert batch["x"].shape == (16, 128, 9) and set(batch["y"].tolist()) <= {0, 1}


def test_missing_files_error(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=har2", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataNotFoundError, match="UCI%20HAR%20Dataset.zip"):
        build_datamodule(cfg.data, 0).setup()


def test_har2_run_learns_the_fixture(compose_cfg, tmp_path):
    write_tiny_har(tmp_path / "d", n_train=200, n_test=100)
    summary = run(compose_cfg("dataset=har2", f"data.root={tmp_path / 'd'}", "data.download=false", "model=lstm",
                              "model.hidden_size=16", "optimizer.lr=1e-2", "trainer.max_epochs=5",
                              "trainer.max_steps=null", "trainer.limit_eval_batches=null", tiny=False,
                              output_dir=tmp_path / "run"))
    assert summary["status"] == "completed" and summary["test_at_best_val"] > 0.8
