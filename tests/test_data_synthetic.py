"""Generated tasks: the adding problem and the copying-memory task."""

from __future__ import annotations

import math

import pytest
import torch

from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import build_datamodule
from rnnrepro.data.synthetic import adding_problem, copy_memory

SMALL = ["data.n_train=64", "data.n_val=32", "data.n_test=32", "data.batch_size=16"]


def _data(compose_cfg, *overrides):
    cfg = compose_cfg(*SMALL, *overrides)
    validate(cfg)
    data = build_datamodule(cfg.data, run_seed=0)
    data.setup()
    return data


@pytest.mark.parametrize("markers", ["halves", "uniform"])
def test_adding_problem_structure(markers):
    x, y = adding_problem(500, 50, markers, torch.Generator().manual_seed(0))
    assert x.shape == (500, 50, 2) and y.shape == (500, 1)
    values, mask = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert (mask.sum(1) == 2).all() and set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(y[:, 0], (values * mask).sum(1))
    if markers == "halves":
        assert (mask[:, :25].sum(1) == 1).all() and (mask[:, 25:].sum(1) == 1).all()
    else:
        assert (mask[:, :25].sum(1) == 2).any()  # both markers may fall in one half
    assert abs(y.mean().item() - 1.0) < 0.05  # E[sum of two U(0,1)] = 1


def test_copy_memory_structure():
    tokens, target = copy_memory(300, lag=30, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == target.shape == (300, 50)
    assert ((tokens[:, :10] >= 1) & (tokens[:, :10] <= 8)).all()
    assert (tokens[:, 10:39] == 0).all() and (tokens[:, 39] == 9).all() and (tokens[:, 40:] == 0).all()
    assert (target[:, :40] == 0).all() and torch.equal(target[:, 40:], tokens[:, :10])


def test_generated_sets_are_fixed_by_split_seed_and_disjoint(compose_cfg):
    a = _data(compose_cfg, "dataset=adding", "data.seq_len=20")
    b = _data(compose_cfg, "dataset=adding", "data.seq_len=20")
    c = _data(compose_cfg, "dataset=adding", "data.seq_len=20", "data.split_seed=3")
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 64, "val": 32, "test": 32}
    assert not torch.equal(a.x[a.splits["train"][:32]], a.x[a.splits["val"]])
    batch = next(a.train_batches(epoch=0))
    assert batch["x"].shape == (16, 20, 2) and batch["y"].shape == (16, 1)


def test_copy_memory_batches_and_baseline(compose_cfg):
    data = _data(compose_cfg, "dataset=copy_memory", "data.lag=10")
    batch = next(data.eval_batches("test"))
    assert batch["x"].shape[1:] == (30, 10) and batch["y"].shape == batch["x"].shape[:2]
    assert torch.equal(batch["x"].argmax(-1)[:, :10], batch["y"][:, -10:])
    assert data.baseline_cross_entropy() == pytest.approx(10 * math.log(8) / 30)


def test_adding_run_learns_below_the_constant_baseline(compose_cfg, tmp_path):
    summary = run(compose_cfg("dataset=adding", "data.seq_len=10", "data.n_train=4096", "data.n_val=512",
                              "data.n_test=512", "data.batch_size=64", "model=lstm", "model.hidden_size=32",
                              "optimizer.lr=1e-2", "trainer.max_epochs=4", "trainer.max_steps=null",
                              "trainer.limit_eval_batches=null", "data.eval_batch_size=512",
                              tiny=False, output_dir=tmp_path / "adding"))
    assert summary["metric"] == "mse" and summary["status"] == "completed"
    assert summary["test_at_best_val"] < 0.167 / 4  # a constant prediction of 1 scores about 1/6


def test_copy_memory_run_reports_per_step_cross_entropy(compose_cfg, tmp_path):
    summary = run(compose_cfg("dataset=copy_memory", "data.lag=5", *SMALL, "model=gru",
                              output_dir=tmp_path / "copy"))
    assert summary["metric"] == "loss" and summary["status"] == "completed"
    assert set(summary["test_last_all"]) >= {"loss", "acc", "ppl", "bpc"}
