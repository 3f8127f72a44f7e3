"""HAR-2: the UCI HAR text layout, the two-class regrouping, training-split standardisation."""

from __future__ import annotations

import pytest
import torch

from helpers import write_tiny_har
from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.har import SIGNALS


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


def test_softmax_mse_loss_and_the_bug_compatible_ten_way_head(compose_cfg, tmp_path):
    """SBO-RNN's HAR-2 code: softmax(logits) against a one-hot target by MSE, the head hard-wired to 10 outputs."""
    import torch.nn.functional as F

    from rnnrepro.tasks import TaskType, build_task

    task = build_task(TaskType.classify_last, loss="softmax_mse")
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    p = logits.softmax(-1)
    expected = ((p[0, 0] - 1) ** 2 + p[0, 1] ** 2 + (p[1, 0] - 1) ** 2 + p[1, 1] ** 2) / 2
    assert float(task.loss(logits, {"y": y})) == pytest.approx(float(expected))
    assert float(build_task(TaskType.classify_last).loss(logits, {"y": y})) == pytest.approx(
        float(F.cross_entropy(logits, y)))

    root = write_tiny_har(tmp_path / "har")
    summary = run(compose_cfg("dataset=har2", f"data.root={root}", "model=rnn", "data.head_outputs=10",
                              "data.loss=softmax_mse"))
    assert summary["status"] == "completed"
    assert summary["data"]["head_outputs"] == 10 and summary["data"]["loss"] == "softmax_mse"
