"""End-to-end runs on generated MNIST files: outputs, schemas, resume, divergence."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest
import torch

from helpers import crash_after
from rnnrepro.api import run
from rnnrepro.config import ConfigError, validate
from rnnrepro.results.aggregate import code_versions
from rnnrepro.results.summary import STATUSES, SUMMARY_FIELDS


def test_run_writes_config_metrics_and_summary(compose_cfg, tmp_path):
    out = tmp_path / "run"
    summary = run(compose_cfg("model=antisym", "trainer.max_steps=4", "trainer.eval_every_n_steps=2", output_dir=out))
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_FIELDS) <= set(on_disk)
    assert on_disk["status"] in STATUSES and on_disk["status"] == "completed"
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk["model"] == "antisym" and on_disk["dataset"] == "pmnist" and on_disk["seed"] == 0
    assert on_disk["steps"] == 4 and on_disk["metric"] == "acc"
    n, m = 8, 28  # tiny hidden size and row-by-row input from conftest
    assert on_disk["params_free"] == n * (n - 1) // 2 + n * m + n + n * 10 + 10
    assert on_disk["params"] == on_disk["params_free"]  # triu storage: nothing redundant
    assert on_disk["data"]["permutation_sha1"] == "24671c758bbde37b4a89bcc53d93f181e40001a8"
    assert 0.0 <= on_disk["test_at_best_val"] <= 1.0 and 0.0 <= on_disk["test_last"] <= 1.0
    assert on_disk["torch_version"] == torch.__version__ and on_disk["device"] == "cpu"

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:4]) == ["step", "time_steps", "epoch", "split"]
    assert list(metrics.columns[-2:]) == ["lr", "wall_time_s"]
    assert {"loss", "acc"} <= set(metrics.columns)
    val = metrics[metrics.split == "val"]
    assert list(val.step) == [2, 4]  # one row per evaluation
    assert set(metrics.split) == {"train", "val", "test_last", "test_at_best_val"}
    assert metrics.wall_time_s.is_monotonic_increasing
    best = val.acc.max()
    assert on_disk["best_val"] == pytest.approx(best)
    assert on_disk["best_step"] == int(val[val.acc == best].step.iloc[0])


@pytest.mark.parametrize("budget,clock", [("max_time_s", "wall_time_s"), ("max_cpu_time_s", "cpu_time_s")])
def test_time_budgets_are_summed_over_resumes(compose_cfg, tmp_path, monkeypatch, budget, clock):
    """trainer.max_time_s (wall clock) and trainer.max_cpu_time_s (the process's CPU time) stop training when their
    clock, evaluations included, reaches them, like max_steps, and a resume continues the same clock. The clock
    under test is faked to advance 1 s per reading and the other barely moves, so the stop is deterministic."""
    import types

    import rnnrepro.training.trainer as trainer_module

    now = {"fast": 0.0, "slow": 0.0}

    def clock_reader(which: str, step: float):
        def read() -> float:
            now[which] += step
            return now[which]
        return read

    fast, slow = clock_reader("fast", 1.0), clock_reader("slow", 1e-6)
    wall, cpu = (fast, slow) if budget == "max_time_s" else (slow, fast)
    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=wall, process_time=cpu,
                                                                      time=time.time))
    out = tmp_path / "timed"
    budgets = ["trainer.max_steps=1000", "trainer.max_epochs=1000", "trainer.eval_every_n_steps=3"]
    first = run(compose_cfg(*budgets, f"trainer.{budget}=12", output_dir=out))
    assert first["status"] == "completed" and 0 < first["steps"] < 1000
    assert 12 <= first[clock] < 40  # the final test evaluations read the clock too
    again = run(compose_cfg(*budgets, f"trainer.{budget}=24", "resume=auto", output_dir=out))
    assert first["steps"] < again["steps"] < 1000 and 24 <= again[clock] < 60
    with pytest.raises(ConfigError, match=f"^trainer.{budget}"):
        validate(compose_cfg(f"trainer.{budget}=0"))


def test_lstm_free_parameters_discount_second_bias(compose_cfg, tmp_path):
    summary = run(compose_cfg("model=lstm", "model.hidden_size=16", output_dir=tmp_path / "lstm"))
    n, m = 16, 28
    assert summary["params"] == 4 * (n * m + n * n + 2 * n) + n * 10 + 10
    assert summary["params_free"] == summary["params"] - 4 * n


def test_existing_run_dir_is_not_overwritten(compose_cfg, tmp_path):
    out = tmp_path / "run"
    run(compose_cfg(output_dir=out))
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds files a run writes"):
        run(compose_cfg(output_dir=out))
    assert (out / "summary.json").read_text() == before


@pytest.mark.parametrize("eval_every", [None, 3])
def test_resume_equals_uninterrupted_run(compose_cfg, tmp_path, monkeypatch, eval_every):
    common = ["model=lstm", "model.impl=cell", "trainer.max_epochs=3", "trainer.max_steps=null",
              "trainer.deterministic=true", "data.batch_size=32", "trainer.limit_eval_batches=null",
              "optimizer=sgd", "optimizer.lr=0.05", "scheduler=linear"]
    if eval_every:
        common.append(f"trainer.eval_every_n_steps={eval_every}")
    reference = run(compose_cfg(*common, output_dir=tmp_path / "ref"))

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        crash_after(patch, 5)  # mid-epoch 2 (3 batches per epoch), after at least one checkpoint
        with pytest.raises(KeyboardInterrupt):
            run(compose_cfg(*common, output_dir=out))
    crashed = json.loads((out / "summary.json").read_text())
    assert crashed["status"] == "interrupted" and "KeyboardInterrupt" in crashed["error"]
    with monkeypatch.context() as patch:  # the resume runs at other code: both versions must be on record
        patch.setattr("rnnrepro.api.git_info", lambda: ("b" * 40, True))
        resumed = run(compose_cfg(*common, "resume=auto", output_dir=out))

    first, second = resumed["segments"]
    assert first["from_step"] == 0 and first["git_sha"] == crashed["git_sha"]
    assert 0 < second["from_step"] < 9 and second["git_sha"] == "b" * 40 and second["git_dirty"]
    assert code_versions(resumed) == [crashed["git_sha"][:10] + ("+dirty" if crashed["git_dirty"] else ""),
                                       "bbbbbbbbbb+dirty"]
    assert resumed["steps"] == reference["steps"] == 9
    for key in ("best_val", "best_step", "test_at_best_val", "test_last", "val_last"):
        assert resumed[key] == reference[key], key
    ref_csv = pd.read_csv(tmp_path / "ref" / "metrics.csv").drop(columns="wall_time_s")
    res_csv = pd.read_csv(out / "metrics.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(ref_csv, res_csv)
    ref_state = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    res_state = torch.load(out / "last.pt", weights_only=False)["model"]
    for name in ref_state:
        assert torch.equal(ref_state[name], res_state[name]), name


def test_resume_auto_without_checkpoint_starts_fresh(compose_cfg, tmp_path):
    summary = run(compose_cfg("resume=auto", output_dir=tmp_path / "fresh"))
    assert summary["status"] == "completed" and summary["steps"] == 2


def _crashed_run(compose_cfg, monkeypatch, out, *overrides, at_step=3):
    with monkeypatch.context() as patch:
        crash_after(patch, at_step)
        with pytest.raises(KeyboardInterrupt):
            run(compose_cfg(*overrides, output_dir=out))


def test_resume_with_other_settings_is_refused_before_anything_is_written(compose_cfg, tmp_path, monkeypatch):
    common = ["trainer.max_steps=6", "trainer.eval_every_n_steps=2", "optimizer.lr=0.01"]
    out = tmp_path / "run"
    _crashed_run(compose_cfg, monkeypatch, out, *common)
    files = {name: (out / name).read_bytes() for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt")}
    changed = [o for o in common if not o.startswith("optimizer.lr")] + ["optimizer.lr=0.5", "seed=1"]
    with pytest.raises(ConfigError, match=r"optimizer\.lr: the run had 0\.01, requested 0\.5.*seed: the run had 0"):
        run(compose_cfg(*changed, "resume=auto", output_dir=out))
    shrunk = common[1:] + ["trainer.max_steps=4"]  # a budget may be raised, never lowered
    with pytest.raises(ConfigError, match="trainer.max_steps: the run had 6, requested 4"):
        run(compose_cfg(*shrunk, "resume=auto", output_dir=out))
    assert {name: (out / name).read_bytes() for name in files} == files  # config.yaml included: nothing rewritten


def test_resume_may_raise_the_budget_and_force_records_other_changes(compose_cfg, tmp_path, monkeypatch):
    common = ["trainer.eval_every_n_steps=2", "optimizer.lr=0.01", "trainer.deterministic=true", "trainer.max_epochs=3"]
    reference = run(compose_cfg(*common, "trainer.max_steps=8", output_dir=tmp_path / "ref"))
    out = tmp_path / "run"
    _crashed_run(compose_cfg, monkeypatch, out, *common, "trainer.max_steps=6")
    raised = run(compose_cfg(*common, "trainer.max_steps=8", "resume=auto", output_dir=out))
    assert raised["steps"] == 8 and raised["segments"][-1]["config_changes"] == [
        "trainer.max_steps: the run had 6, requested 8"]
    for key in ("best_val", "best_step", "test_at_best_val", "test_last"):
        assert raised[key] == reference[key], key  # the same run, continued to the larger budget

    forced_dir = tmp_path / "forced"
    _crashed_run(compose_cfg, monkeypatch, forced_dir, *common, "trainer.max_steps=6")
    forced = run(compose_cfg(common[0], "optimizer.lr=0.02", *common[2:], "trainer.max_steps=6",
                             "resume=force", output_dir=forced_dir))
    assert forced["status"] == "completed"
    assert forced["segments"][0]["config_changes"] == []
    assert forced["segments"][1]["config_changes"] == ["optimizer.lr: the run had 0.01, requested 0.02"]


def test_resume_auto_restarts_a_run_that_died_before_its_first_checkpoint(compose_cfg, tmp_path, monkeypatch):
    common = ["trainer.max_steps=4", "trainer.eval_every_n_steps=4", "trainer.deterministic=true"]
    out = tmp_path / "run"
    _crashed_run(compose_cfg, monkeypatch, out, *common, at_step=2)  # before the first evaluation and checkpoint
    assert not (out / "last.pt").exists() and (out / "summary.json").exists()
    crashed = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds files a run writes"):  # without resume: refused, as before
        run(compose_cfg(*common, output_dir=out))
    summary = run(compose_cfg(*common, "resume=auto", output_dir=out))
    reference = run(compose_cfg(*common, output_dir=tmp_path / "ref"))
    assert summary["status"] == "completed" and summary["steps"] == 4 and len(summary["segments"]) == 1
    for key in ("best_val", "test_at_best_val", "test_last"):
        assert summary[key] == reference[key], key
    kept = sorted(p.name for p in out.glob("*.unstarted-*"))  # the earlier attempt's files, renamed, not deleted
    assert [name.split(".unstarted-")[0] for name in kept] == ["config", "summary"]
    assert next(out.glob("summary.unstarted-*.json")).read_text() == crashed


def test_resume_auto_never_restarts_a_finished_run_without_its_checkpoint(compose_cfg, tmp_path):
    out = tmp_path / "run"
    run(compose_cfg(output_dir=out))
    (out / "last.pt").unlink()
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="holds a completed run whose last.pt is missing"):
        run(compose_cfg("resume=auto", output_dir=out))
    assert (out / "summary.json").read_text() == before and not list(out.glob("*.unstarted-*"))


def test_resume_from_missing_path_names_the_fix(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="not auto, force or an existing path. resume=auto continues"):
        run(compose_cfg(f"resume={tmp_path / 'nowhere'}", output_dir=tmp_path / "x"))
    with pytest.raises(ConfigError, match=r"did you mean resume=auto\?"):
        validate(compose_cfg("resume=aut"))
    assert not (tmp_path / "x").exists()  # refused before the output dir is made


def test_nan_loss_stops_with_diverged_and_keeps_last_good_checkpoint(compose_cfg, tmp_path, monkeypatch):
    from rnnrepro.tasks.base import ClassifyLast

    original = ClassifyLast.loss
    calls = {"n": 0}

    def loss(self, out, batch):
        calls["n"] += 1
        value = original(self, out, batch)
        return value * float("nan") if calls["n"] > 4 else value

    monkeypatch.setattr(ClassifyLast, "loss", loss)
    out = tmp_path / "nan"
    summary = run(compose_cfg("trainer.max_steps=10", "trainer.eval_every_n_steps=2", output_dir=out))
    assert summary["status"] == "diverged" and "nan" in summary["error"]
    assert summary["steps"] == 4 and summary["test_last"] is None
    assert summary["test_at_best_val"] is not None  # the best-validation weights are still good
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["progress"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert _strict_json(out / "summary.json")["status"] == "diverged"


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"{path}: bare {name}, which strict JSON parsers reject")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_summary_json_is_strict_with_non_finite_values_named(tmp_path):
    from rnnrepro.results.summary import write_json_atomic

    path = tmp_path / "summary.json"
    write_json_atomic({"best_val": float("nan"), "loss": 1.5, "segments": [{"x": float("inf")}],
                       "test": {"acc": float("-inf"), "n": 3}}, str(path))
    on_disk = _strict_json(path)
    assert on_disk["best_val"] is None and on_disk["loss"] == 1.5 and on_disk["segments"] == [{"x": None}]
    assert on_disk["test"] == {"acc": None, "n": 3}
    assert on_disk["nonfinite_fields"] == ["best_val", "segments[0].x", "test.acc"]
    write_json_atomic({"loss": 1.5}, str(path))
    assert "nonfinite_fields" not in _strict_json(path)


def test_seed_zero_is_a_seed(compose_cfg, tmp_path):
    a = run(compose_cfg("seed=0", output_dir=tmp_path / "a"))
    b = run(compose_cfg("seed=0", output_dir=tmp_path / "b"))
    c = run(compose_cfg("seed=1", output_dir=tmp_path / "c"))
    assert a["test_last_all"] == b["test_last_all"]
    assert a["test_last_all"] != c["test_last_all"]
    assert math.isfinite(a["test_last_all"]["loss"])


def test_resuming_a_finished_run_does_not_duplicate_rows(compose_cfg, tmp_path):
    out = tmp_path / "done"
    first = run(compose_cfg(output_dir=out))
    again = run(compose_cfg("resume=auto", output_dir=out))
    assert again["steps"] == first["steps"] and again["test_last"] == first["test_last"]
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics.split == "test_last").sum() == 1 and (metrics.split == "val").sum() == 1
