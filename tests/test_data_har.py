"""HAR-2: the UCI HAR text layout, the two-class regrouping, training-split standardisation."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import write_tiny_har
from rnnrepro.api import run
from rnnrepro.config import ConfigError, validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.har import SIGNALS


def test_layout_regrouping_and_normalisation(compose_cfg, tmp_path):
    write_tiny_har(tmp_path)
    cfg = compose_cfg("dataset=har2", "data.verify_checksums=false", f"data.root={tmp_path}", "data.download=false")
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
    cfg = compose_cfg("dataset=har2", "data.verify_checksums=false", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataNotFoundError, match="UCI%20HAR%20Dataset.zip"):
        build_datamodule(cfg.data, 0).setup()


def test_har2_run_learns_the_fixture(compose_cfg, tmp_path):
    write_tiny_har(tmp_path / "d", n_train=200, n_test=100)
    summary = run(compose_cfg("dataset=har2", "data.verify_checksums=false", f"data.root={tmp_path / 'd'}",
                              "data.download=false", "model=lstm",
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
    # by hand: softmax([2, 0]) = (e^2, 1) / (e^2 + 1), softmax([0, 1]) = (1, e) / (1 + e); nn.MSELoss() averages
    # the 4 squared errors over the batch (2) and the classes (2)
    a, b = math.exp(2) / (math.exp(2) + 1), 1 / (1 + math.e)
    expected = ((a - 1) ** 2 + (1 - a) ** 2 + (b - 1) ** 2 + (1 - b) ** 2) / 4
    assert float(task.loss(logits, {"y": y})) == pytest.approx(expected, rel=1e-6)
    assert float(task.loss(logits, {"y": y})) == pytest.approx(
        float(torch.nn.MSELoss()(logits.softmax(-1), F.one_hot(y, 2).float())), rel=1e-6)
    ten = torch.zeros(2, 10)  # the code's 10-way head: the mean runs over 10 classes
    p = 1 / 10
    assert float(task.loss(ten, {"y": y})) == pytest.approx(((p - 1) ** 2 + 9 * p**2) * 2 / 20, rel=1e-6)
    assert float(build_task(TaskType.classify_last).loss(logits, {"y": y})) == pytest.approx(
        float(F.cross_entropy(logits, y)))

    root = write_tiny_har(tmp_path / "har")
    summary = run(compose_cfg("dataset=har2", "data.verify_checksums=false", f"data.root={root}", "model=rnn",
                              "data.head_outputs=10",
                              "data.loss=softmax_mse"))
    assert summary["status"] == "completed"
    assert summary["data"]["head_outputs"] == 10 and summary["data"]["loss"] == "softmax_mse"


def _har(compose_cfg, root, *overrides):
    data = build_datamodule(compose_cfg("dataset=har2", "data.verify_checksums=false", f"data.root={root}",
                                        "data.download=false", *overrides).data,
                            0)
    data.setup()
    return data


def _subjects(root) -> torch.Tensor:
    from rnnrepro.data.har import read_split

    return read_split(str(root), "train", verify_sizes=False)[2]


def test_subject_split_holds_out_whole_subjects(compose_cfg, tmp_path):
    """The default validation split shares no subject with training (their windows overlap by 50%)."""
    write_tiny_har(tmp_path, n_train=100, subjects=10)
    data = _har(compose_cfg, tmp_path)
    subjects = _subjects(tmp_path)
    train, val = set(subjects[data.splits["train"]].tolist()), set(subjects[data.splits["val"]].tolist())
    assert not train & val and len(val) == 2 and len(train) == 8  # round(0.2 x 10) subjects
    assert sorted(val) == data.describe()["val_subjects"] and data.describe()["val_split"] == "subject"
    assert len(data.splits["val"]) == 20 and len(data.splits["train"]) == 80
    # seeded: the same subjects again, others with another split_seed
    assert _har(compose_cfg, tmp_path).describe()["val_subjects"] == sorted(val)
    others = {tuple(_har(compose_cfg, tmp_path, f"data.split_seed={s}").describe()["val_subjects"]) for s in range(6)}
    assert len(others) > 1


def test_window_split_mixes_subjects(compose_cfg, tmp_path):
    write_tiny_har(tmp_path, n_train=100, subjects=10)
    data = _har(compose_cfg, tmp_path, "data.val_split=window")
    subjects = _subjects(tmp_path)
    assert set(subjects[data.splits["train"]].tolist()) & set(subjects[data.splits["val"]].tolist())
    assert len(data.splits["val"]) == 20 and data.describe()["val_subjects"] is None


def test_train_fraction_is_a_seeded_subset_with_validation_unchanged(compose_cfg, tmp_path):
    write_tiny_har(tmp_path, n_train=400, subjects=10)
    full = _har(compose_cfg, tmp_path)
    tenth = _har(compose_cfg, tmp_path, "data.train_fraction=0.1")
    kept = tenth.splits["train"]
    assert len(kept) == 32 and set(kept.tolist()) < set(full.splits["train"].tolist())
    assert torch.equal(tenth.splits["val"], full.splits["val"])
    assert torch.equal(tenth.splits["test"], full.splits["test"])
    assert torch.equal(_har(compose_cfg, tmp_path, "data.train_fraction=0.1").splits["train"], kept)
    reseeded = _har(compose_cfg, tmp_path, "data.train_fraction=0.1", "data.split_seed=1")
    assert not torch.equal(reseeded.splits["train"], kept)
    # standardised with the subset's own statistics
    standardised = tenth.x[kept].reshape(-1, 9)
    assert torch.allclose(standardised.mean(0), torch.zeros(9), atol=1e-4)
    with pytest.raises(ConfigError, match="^data.train_fraction"):
        validate(compose_cfg("dataset=har2", "data.verify_checksums=false", "data.train_fraction=0"))
