"""scripts/momentum_curves.py: the epoch alignment (their 0-based epoch e is after e+1 epochs), the choice of the
reference curve by model, N and hyperparameters, and the verdicts, on generated runs and a generated curve file in
the real columns."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from helpers import load_script

COLUMNS = ["source_file", "task", "model", "N", "seed_or_run", "metric", "epoch", "value", "x_unit", "run_prefix",
           "tb_tag", "mu", "epsilon", "mus", "restart", "gc", "N_from_notebook", "wall_time", "index"]


def _curves(path):
    rows = []
    for seed in range(5):
        for epoch in range(4):  # 0-based: the value after epoch+1 epochs
            rows.append({"task": "mnist", "model": "MomentumLSTM", "N": 128, "seed_or_run": seed, "metric": "test_loss",
                         "epoch": epoch, "value": 2.0 - epoch * 0.5 + seed * 0.01, "mu": 0.6, "epsilon": 0.6})
            rows.append({"task": "mnist", "model": "MomentumLSTM", "N": 128, "seed_or_run": seed, "metric": "test_loss",
                         "epoch": epoch, "value": 9.0, "mu": 0.9, "epsilon": 0.1})  # another setting: not chosen
            rows.append({"task": "mnist", "model": "MomentumLSTM", "N": None, "N_from_notebook": 256,
                         "seed_or_run": seed, "metric": "test_loss", "epoch": epoch, "value": 7.0, "mu": 0.6,
                         "epsilon": 0.6})  # another N: not chosen
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False, compression="gzip")


def _run(root, seed, losses, train_on_all=True):
    run = root / "reduced" / "momentum_rnn" / "table1_mnist_mlstm_n128" / f"seed_{seed}"
    run.mkdir(parents=True)
    config = {"seed": seed, "meta": {"experiment": "momentum_rnn/table1_mnist_mlstm_n128"},
              "model": {"variant": "momentum", "hidden_size": 128, "mu": 0.6, "step": 0.6, "beta": 0.9, "restart": 0},
              "data": {"name": "smnist", "train_on_all": train_on_all}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": 469 * e, "time_steps": 0, "epoch": e, "split": split, "loss": loss, "acc": 0.5}
            for e, loss in enumerate(losses, start=1) for split in ("val", "test_each_eval")]
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    (run / "summary.json").write_text(json.dumps({"status": "completed", "segments": [{"git_sha": "a" * 40}]}))


def test_epochs_are_aligned_and_the_matching_reference_is_chosen(tmp_path):
    script = load_script("momentum_curves")
    curves = tmp_path / "curves.csv.gz"
    _curves(curves)
    _run(tmp_path / "runs", 0, [2.02, 1.52, 1.02])  # inside [2.0, 2.04], [1.5, 1.54], [1.0, 1.04]
    _run(tmp_path / "runs", 1, [2.02, 1.30, 1.60])  # below at epoch 2, above at epoch 3
    out = tmp_path / "out" / "mnist_curves"
    assert script.main(["--runs-dir", str(tmp_path / "runs"), "--curves", str(curves), "--out", str(out)]) == 0
    table = pd.read_csv(out.with_suffix(".csv"))
    first = table[(table.seed == 0) & (table.epoch == 1)].iloc[0]
    assert first.authors_min == 2.0 and first.authors_max == 2.04 and first.authors_seeds == 5  # their epoch 0
    assert table[table.seed == 0].inside.all()
    md = out.with_suffix(".md").read_text()
    assert "inside the authors' seed range at every matched epoch (1-3)" in md
    assert "inside at 1 of 3 epochs; above the authors' max (worse) at epochs [3]; below the authors' min (better) " \
           "at epochs [2]" in md
    assert "60k (code)" in md and out.with_suffix(".png").exists()
