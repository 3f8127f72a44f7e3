"""TIMIT (bring your own): the documented .pt format, masked next-frame targets, per-step MSE, the clear error."""

from __future__ import annotations

import pytest
import torch

from helpers import write_tiny_timit
from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.tasks.base import Meter, RegressionEach


def test_missing_files_say_timit_is_licensed(compose_cfg, tmp_path):
    with pytest.raises(DataNotFoundError, match="licensed"):
        build_datamodule(compose_cfg("dataset=timit", f"data.root={tmp_path}").data, 0).setup()


def test_batches_masks_and_split_swap(compose_cfg, tmp_path):
    write_tiny_timit(tmp_path, sizes=(20, 6, 4))
    cfg = compose_cfg("dataset=timit", f"data.root={tmp_path}")
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    assert data.describe()["sizes"] == {"train": 20, "val": 6, "test": 4}
    idx = data.splits["train"][:3]
    batch = data.make_batch(idx)
    for b, i in enumerate(idx.tolist()):
        n = int(data.lengths[i]) - 1
        assert batch["mask"][b].sum() == n
        assert torch.equal(batch["y"][b, : n - 1], batch["x"][b, 1:n])  # the target is the next frame
    swapped = build_datamodule(compose_cfg("dataset=timit", f"data.root={tmp_path}", "data.swap_val_test=true").data, 0)
    swapped.setup()
    assert swapped.describe()["sizes"] == {"train": 20, "val": 4, "test": 6}


def test_masked_mse_ignores_padding():
    task, meter = RegressionEach(), Meter()
    y = torch.zeros(1, 3, 2)
    out = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [100.0, 100.0]]])
    batch = {"y": y, "mask": torch.tensor([[True, True, False]])}
    task.update(meter, out, batch)
    assert task.compute(meter)["mse"] == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert task.loss(out, batch).item() == pytest.approx(2.5)


def test_short_run_lowers_the_mse(compose_cfg, tmp_path):
    write_tiny_timit(tmp_path / "d", sizes=(400, 40, 40))
    summary = run(compose_cfg("dataset=timit", f"data.root={tmp_path / 'd'}", "model=lstm", "model.hidden_size=64",
                              "optimizer.lr=1e-2", "trainer.max_epochs=10", "trainer.max_steps=null",
                              "trainer.limit_eval_batches=null", "data.batch_size=20", tiny=False,
                              output_dir=tmp_path / "run"))
    import pandas as pd

    val = pd.read_csv(tmp_path / "run" / "metrics.csv").query("split == 'val'")
    assert summary["metric"] == "mse" and summary["status"] == "completed"
    assert val.mse.iloc[-1] < val.mse.iloc[0]
    assert summary["test_at_best_val"] < 0.4  # predicting zeros scores 0.5 (the variance of the sine frames)
