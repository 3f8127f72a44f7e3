"""Paper tables: aggregation of run summaries beside the reported values, and the reproduce-tables driver."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from helpers import REPO
from rnnrepro.results.aggregate import (
    list_papers,
    load_curves,
    load_expected,
    load_summaries,
    summarise_cell,
    write_table,
)


def _summary(value, last, status="completed", sha="abc1234567", seed=0):
    return {"status": status, "test_at_best_val": value, "test_last": last, "steps": 100, "wall_time_s": 10.0,
            "git_sha": sha, "device_name": "cpu (test)", "finished_at": "2026-01-01T00:00:00+00:00", "seed": seed}


def test_expected_files_cover_the_issue_tables():
    assert {"antisymmetric_rnn", "sbo_rnn"} <= set(list_papers(str(REPO / "results")))
    anti = load_expected(str(REPO / "results"), "antisymmetric_rnn")
    table1 = anti[anti.table == "table1"]
    assert set(table1.column) == {"MNIST", "pMNIST"} and len(table1) == 6
    table2 = anti[anti.table == "table2"]
    assert set(table2.column) == {"pixel-by-pixel", "noise padded"} and len(table2) == 6
    assert table2.set_index("experiment").reported["antisymmetric_rnn/table2_noise_antisym_gated"] == 54.7
    assert (anti.reported_kind == "paper").all()
    assert anti.set_index("experiment").reported["antisymmetric_rnn/table1_pmnist_antisym"] == 95.8
    sbo = load_expected(str(REPO / "results"), "sbo_rnn")
    found = sbo[sbo.reported.notna()]
    assert (found.reported_kind == "figure").all()  # read off a figure, never mixed into a "paper" column
    assert sbo[sbo.reported.isna()].source.str.startswith("[not found]").all()  # permuted MNIST: no number
    assert set(sbo.row) == {"Ours (SBO-RNN)", "Ours (SBO-RNN), official code's behaviour", "LSTM", "RNN", "iRNN",
                            "AntisymmetricRNN"}


def test_not_found_cells_stay_empty_and_log_values_are_labelled():
    stable = load_expected(str(REPO / "results"), "stable_recurrent_models")
    assert stable.reported.isna().all()  # Table 1 was not read: no value may be filled in
    table1 = stable[stable.table == "table1"]
    assert set(table1.row) == {"Stable RNN", "Unstable RNN", "Stable LSTM", "Unstable LSTM"} and len(table1) == 16
    assert (table1.reported_kind == "paper").all() and table1.source.str.startswith("[not found]").all()
    # other papers' numbers sit in their own column, never in "reported"
    external = table1.set_index("experiment").external
    assert external["stable_recurrent_models/table1_jsb_lstm_stable"].startswith("8.45 (LSTM; Bai, Kolter, Koltun")
    assert external["stable_recurrent_models/table1_atis_rnn_unstable"].startswith("94.98 (Elman RNN; Mesnil")
    assert external.notna().sum() == 8
    assert (stable[stable.table != "table1"].reported_kind == "none").all()  # extensions: no paper cell
    momentum = load_expected(str(REPO / "results"), "momentum_rnn")
    logged = momentum.dropna(subset=["reported"])
    assert len(logged) >= 1 and (logged.reported_kind == "log").all()  # never mixed into a "paper" column
    assert logged.source.str.startswith("[log:").all()
    assert (momentum[momentum.reported.isna()].reported_kind != "log").all()


def test_cell_statistics_and_difference():
    expected = pd.Series({"column": "MNIST", "row": "X", "unit": "%", "reported": 98.0, "reported_kind": "paper",
                          "experiment": "p/x", "source": "[paper Table 1]"})
    runs = [_summary(0.97, 0.96, seed=0), _summary(0.99, 0.98, seed=1), _summary(None, None, "diverged", seed=2)]
    cell = summarise_cell(expected, runs)
    assert cell["seeds"] == 2 and cell["failed_or_diverged"] == 1
    assert cell["mean_test_at_best_val"] == pytest.approx(98.0)
    assert cell["std_test_at_best_val"] == pytest.approx(1.41421356, rel=1e-6)  # sample std over seeds
    assert cell["test_at_best_val"] == "98.00 ± 1.41" and cell["test_last"] == "97.00 ± 1.41"
    assert cell["diff"] == "+0.00" and cell["reported"] == "98"


def test_one_seed_has_no_spread():
    expected = pd.Series({"column": "JSB", "row": "X", "unit": "", "reported": 8.0, "reported_kind": "paper",
                          "experiment": "p/x", "source": "[paper]"})
    cell = summarise_cell(expected, [_summary(8.5, 8.6)])
    assert cell["test_at_best_val"] == "8.500 (one seed)" and cell["std_test_at_best_val"] is None
    assert cell["diff"] == "+0.500"


def test_not_found_reported_values_stay_empty(tmp_path):
    expected = pd.Series({"column": "pMNIST", "row": "Y", "unit": "%", "reported": float("nan"),
                          "reported_kind": "paper", "experiment": "p/y", "source": "[not found]"})
    cell = summarise_cell(expected, [_summary(0.5, 0.5)])
    assert cell["reported"] == "not found" and cell["diff"] == "—"
    path = write_table(str(tmp_path), "p", "t", "smoke", pd.DataFrame([cell]), "make reproduce-tables")
    text = open(path).read()
    assert "smoke: pipeline check, not a reproduction" in text
    assert "not found" in text and "abc1234567" in text and "cpu (test)" in text
    assert path.endswith("t.smoke.md") and (tmp_path / "p" / "t.smoke.csv").exists()


def test_external_reference_gets_its_own_labelled_column_and_no_diff(tmp_path):
    expected = pd.Series({"column": "JSB", "row": "Stable LSTM", "unit": "", "reported": float("nan"),
                          "reported_kind": "paper", "experiment": "p/z", "source": "[not found]",
                          "external": "8.45 (LSTM; another paper)"})
    cell = summarise_cell(expected, [_summary(8.1, 8.2)])
    assert cell["external reference (not this paper)"] == "8.45 (LSTM; another paper)" and cell["diff"] == "—"
    text = open(write_table(str(tmp_path), "p", "t", "full", pd.DataFrame([cell]), "make")).read()
    header = next(line for line in text.splitlines() if line.startswith("| column"))
    assert [c.strip() for c in header.split("|")].index("external reference (not this paper)") == \
        [c.strip() for c in header.split("|")].index("diff") - 1
    assert "not this paper's result" in text
    plain = summarise_cell(expected.drop("external"), [_summary(8.1, 8.2)])
    plain_path = write_table(str(tmp_path), "p", "u", "full", pd.DataFrame([plain]), "make")
    assert "external reference (not this paper)" not in open(plain_path).read()


def _run_with_curve(folder, seed: int, val: list[float]) -> str:
    folder.mkdir(parents=True)
    steps = [100 * (i + 1) for i in range(len(val))]
    rows = [{"step": s, "epoch": i, "split": split, "loss": 1.0, "acc": v if split == "val" else 0.0}
            for i, (s, v) in enumerate(zip(steps, val)) for split in ("train", "val")]
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({**_summary(0.9, 0.9, seed=seed), "metric": "acc"}))
    return str(folder)


def test_learning_curves_are_read_from_each_run_and_linked_from_the_table(tmp_path):
    runs = [("A", _run_with_curve(tmp_path / "a0", 0, [0.2, 0.5, 0.7])),
            ("A", _run_with_curve(tmp_path / "a1", 1, [0.3, 0.6])),
            ("B", str(tmp_path / "never-ran"))]                      # a run without files is left out
    curves = load_curves(runs)
    assert curves.groupby(["row", "seed"]).val.apply(list).to_dict() == {("A", 0): [0.2, 0.5, 0.7],
                                                                          ("A", 1): [0.3, 0.6]}
    assert curves.step.tolist() == [100, 200, 300, 100, 200] and set(curves.metric) == {"acc"}
    cell = summarise_cell(pd.Series({"column": "c", "row": "A", "unit": "%", "reported": 95.0,
                                     "reported_kind": "paper", "experiment": "p/a", "source": "[paper]"}),
                          load_summaries([d for _, d in runs]))
    path = write_table(str(tmp_path / "results"), "p", "t", "reduced", pd.DataFrame([cell]), "make", curves)
    text = open(path).read()
    assert "t.reduced.curves.csv" in text
    written = pd.read_csv(tmp_path / "results" / "p" / "t.reduced.curves.csv")
    assert written.val.tolist() == [0.2, 0.5, 0.7, 0.3, 0.6]
    if (tmp_path / "results" / "p" / "t.reduced.curves.png").exists():
        assert "![learning curves](t.reduced.curves.png)" in text
    plain = open(write_table(str(tmp_path / "results"), "p", "u", "reduced", pd.DataFrame([cell]), "make")).read()
    assert "curves" not in plain  # without curves (the smoke tier) the table links none


def test_render_tells_seeds_never_started_from_runs_that_left_no_summary(tmp_path, monkeypatch):
    """Of a preset's 3 seeds, one finished, one started and stopped without a summary, one never started: the table
    counts the finished one, and its notes name the other two apart (a seed not run is not a failure)."""
    import scripts.reproduce_tables as rt

    results = tmp_path / "results"
    (results / "expected").mkdir(parents=True)
    expected = pd.read_csv(REPO / "results" / "expected" / "antisymmetric_rnn.csv")
    expected = expected[expected.experiment == "antisymmetric_rnn/table1_pmnist_antisym"].head(1)
    expected.to_csv(results / "expected" / "antisymmetric_rnn.csv", index=False)
    monkeypatch.setattr(rt, "RESULTS", results)
    experiment = expected.experiment.iloc[0]
    finished = _run_with_curve(tmp_path / "seed_0", 0, [0.5, 0.8])
    (tmp_path / "seed_1").mkdir()  # started, stopped before writing a summary
    runs = [{"experiment": experiment, "dir": tmp_path / name} for name in ("seed_0", "seed_1", "seed_2")]
    assert str(runs[0]["dir"]) == finished
    (path,) = rt.render("antisymmetric_rnn", "full", runs, "make reproduce-tables", only=[experiment])
    table = pd.read_csv(path[:-len(".md")] + ".csv")
    (notes,) = table.notes.tolist()
    assert table.seeds.tolist() == [1]
    assert "1 of 2 runs left no summary" in notes and "1 of the preset's 3 seeds not run" in notes


def test_reproduce_tables_dry_run_plans_every_row():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce_tables.py"), "--tier", "smoke",
                             "--paper", "sbo_rnn", "--dry-run", "--runs-dir", "/nonexistent-runs"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    rows = len(pd.read_csv(REPO / "results" / "expected" / "sbo_rnn.csv"))
    assert len(lines) == rows * 2  # every expected row, two smoke seeds each
    assert all("meta.tier=smoke" in line and "trainer.max_steps=10" in line for line in lines)


def test_reproduce_tables_runs_reuses_and_renders(tmp_path, mnist_root, monkeypatch):
    """One real preset, end to end through the CLI, with generated data; a second call reuses the runs."""
    import scripts.reproduce_tables as rt

    results = tmp_path / "results"
    (results / "expected").mkdir(parents=True)
    expected = pd.read_csv(REPO / "results" / "expected" / "sbo_rnn.csv").head(1)  # the SBO-RNN row only
    expected.to_csv(results / "expected" / "sbo_rnn.csv", index=False)
    monkeypatch.setattr(rt, "RESULTS", results)
    extra = [f"data.root={mnist_root}", "data.download=false", "model.hidden_size=8", "data.pixels_per_step=28",
             "trainer.device=cpu"]
    argv = ["--tier", "smoke", "--paper", "sbo_rnn", "--runs-dir", str(tmp_path / "runs"), *extra]
    assert rt.main(argv) == 0
    table = pd.read_csv(results / "sbo_rnn" / "pixel_mnist.smoke.csv")
    assert table.seeds.tolist() == [2] and table.tier.tolist() == ["smoke"]
    summaries = sorted((tmp_path / "runs").rglob("summary.json"))
    assert len(summaries) == 2 and {json.loads(p.read_text())["tier"] for p in summaries} == {"smoke"}
    stamp = [p.stat().st_mtime_ns for p in summaries]
    assert rt.main(argv) == 0  # reuse: nothing reruns
    assert [p.stat().st_mtime_ns for p in summaries] == stamp


def test_cells_can_measure_validation_or_a_training_extra():
    """results/expected `measured`: val (the OK PTB logs report validation bpc) or train_extras.<key> (curriculum T);
    the table says what was measured."""
    runs = [{**_summary(0.5, 0.6, seed=0), "best_val": 1.8, "val_last": 1.9, "train_extras": {"curriculum_T": 9.0}},
            {**_summary(0.5, 0.6, seed=1), "best_val": 1.6, "val_last": 1.7, "train_extras": {"curriculum_T": 11.0}}]
    base = {"column": "c", "row": "OK", "unit": "bpc", "reported": 1.742, "reported_kind": "log",
            "experiment": "online_rtrl/ptb_ok", "source": "[log: x]"}
    val = summarise_cell(pd.Series({**base, "measured": "val"}), runs)
    assert val["mean_test_at_best_val"] == pytest.approx(1.7) and val["test_last"] == "1.800 ± 0.141"
    assert "best validation" in val["notes"]
    curriculum = summarise_cell(pd.Series({**base, "unit": "T", "measured": "train_extras.curriculum_T"}), runs)
    assert curriculum["mean_test_at_best_val"] == pytest.approx(10.0) and "curriculum T" in curriculum["notes"]
    with pytest.raises(ValueError, match="measured"):
        summarise_cell(pd.Series({**base, "measured": "best_test"}), runs)


def test_reproduce_tables_decides_reuse_from_the_resolved_config_and_never_deletes(tmp_path, mnist_root,
                                                                                     monkeypatch):
    """An override that changes nothing the run computes (data.root spelled differently, threads) reuses the run; a
    real change moves the finished run aside, intact, and trains a new one."""
    import scripts.reproduce_tables as rt

    results = tmp_path / "results"
    (results / "expected").mkdir(parents=True)
    pd.read_csv(REPO / "results" / "expected" / "sbo_rnn.csv").head(1).to_csv(results / "expected" / "sbo_rnn.csv",
                                                                              index=False)
    monkeypatch.setattr(rt, "RESULTS", results)
    monkeypatch.setattr(rt, "SMOKE_SEEDS", 1)
    runs = tmp_path / "runs"
    base = ["data.download=false", "model.hidden_size=8", "data.pixels_per_step=28", "trainer.device=cpu"]
    argv = ["--tier", "smoke", "--paper", "sbo_rnn", "--runs-dir", str(runs)]
    assert rt.main([*argv, f"data.root={mnist_root}", *base]) == 0
    (run_dir,) = [p.parent for p in runs.rglob("summary.json")]
    first = (run_dir / "summary.json").read_text()
    # same computation, other override strings: reused, nothing rewritten
    assert rt.main([*argv, f"data.root={mnist_root}/", *base, "trainer.num_threads=1"]) == 0
    assert (run_dir / "summary.json").read_text() == first
    # a changed hyperparameter: the finished run is set aside intact, a new one is trained in its place
    assert rt.main([*argv, f"data.root={mnist_root}", *base, "optimizer.lr=0.05"]) == 0
    (moved,) = [p for p in run_dir.parent.iterdir() if ".superseded-" in p.name]
    assert (moved / "summary.json").read_text() == first
    assert {(moved / n).exists() for n in ("metrics.csv", "last.pt", "best.pt", "config.yaml")} == {True}
    assert (run_dir / "summary.json").read_text() != first
    assert "lr: 0.05" in (run_dir / "config.yaml").read_text()


def test_a_key_added_after_a_run_matches_when_the_request_holds_its_default(compose_cfg):
    from omegaconf import OmegaConf

    import scripts.reproduce_tables as rt

    cfg = compose_cfg("model=lstm")
    saved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    del saved["model"]["dropout"]  # as if the run predates the dropout keys
    assert rt.config_differences(cfg, saved) == []
    changed = compose_cfg("model=lstm", "model.num_layers=2", "model.dropout.between=0.5")
    diffs = rt.config_differences(changed, saved)
    assert any(d.startswith("model.dropout.between: the run predates") for d in diffs)
    assert any(d.startswith("model.num_layers: the run had 1") for d in diffs)
    # a key whose default changed the behaviour: an old run matches only the old value
    del saved["trainer"]["flush_denormal"]
    assert any(d.startswith("trainer.flush_denormal") for d in rt.config_differences(cfg, saved))
    assert rt.config_differences(compose_cfg("model=lstm", "trainer.flush_denormal=false"), saved) == []


def test_reduced_tier_runs_the_reduced_seeds_with_the_reduced_overrides(tmp_path):
    """momentum_rnn's MNIST presets: meta.reduced (the code's 60k, 10 epochs) for meta.reduced_seeds (0, 1) only,
    while the full tier keeps meta.seeds (0-4); presets without meta.reduced are left out of the reduced tier."""
    import scripts.reproduce_tables as script

    only = ["momentum_rnn/table1_mnist_mlstm_n128", "momentum_rnn/table2_timit_lstm_n158"]
    reduced = script.plan_runs("momentum_rnn", "reduced", tmp_path, [], only)
    assert [(r["experiment"], r["seed"]) for r in reduced] == [("momentum_rnn/table1_mnist_mlstm_n128", 0),
                                                               ("momentum_rnn/table1_mnist_mlstm_n128", 1)]
    assert {"data.train_on_all=true", "trainer.max_epochs=10", "meta.tier=reduced"} <= set(reduced[0]["overrides"])
    full = script.plan_runs("momentum_rnn", "full", tmp_path, [], only)
    assert sorted({r["seed"] for r in full if "table1" in r["experiment"]}) == [0, 1, 2, 3, 4]
    assert not any("train_on_all" in o for r in full for o in r["overrides"])
