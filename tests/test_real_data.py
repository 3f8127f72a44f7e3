"""On real handwritten digits (the shared data folder; skipped when absent): a short pixel-by-pixel run learns."""

from __future__ import annotations

import pytest

from helpers import SHARED_DATA
from rnnrepro.api import run

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").exists(),
                                reason="shared real MNIST digits not present")


def test_short_irnn_run_on_real_digits_learns_well_above_chance(compose_cfg, tmp_path):
    # 8,000 real digits (6,400 train / 1,600 val) and 2,000 test digits, T = 784 pixels, one epoch of 100 steps.
    cfg = compose_cfg("dataset=smnist", f"data.root={SHARED_DATA}", "model=irnn", "model.hidden_size=64",
                      "optimizer.lr=1e-4", "trainer.grad_clip=1.0", "data.batch_size=64", "trainer.max_epochs=1",
                      "trainer.max_steps=null", "trainer.limit_eval_batches=null", "data.pixels_per_step=1",
                      "data.eval_batch_size=500", "data.verify_checksums=false",  # a subset: the documented opt-out
                      tiny=False, output_dir=tmp_path / "real")
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 100
    assert summary["data"]["sizes"] == {"train": 6400, "val": 1600, "test": 2000}
    assert summary["best_val"] > 0.3 and summary["test_at_best_val"] > 0.3  # chance is 0.1
