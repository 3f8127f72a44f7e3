"""W&B mirrors the local files and never endangers them."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rnnrepro.api import run


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.id, self.finished = kwargs, [], {}, "fake123", False

    def log(self, data, step):
        self.logged.append((step, data))

    def finish(self):
        self.finished = True


def test_wandb_mirror_gets_group_tags_metrics_and_summary(compose_cfg, tmp_path, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1])
    cfg = compose_cfg("experiment=sbo_rnn/pixel_mnist_rnn", "logger=wandb", "logger.mode=offline",
                      "model.hidden_size=8", "trainer.max_steps=2", "trainer.max_epochs=5")
    summary = run(cfg)
    (fake,) = runs
    assert fake.kwargs["group"] == "sbo_rnn/pixel_mnist_rnn" and fake.kwargs["mode"] == "offline"
    assert {"sbo_rnn", "pixel_mnist", "RNN"} <= set(fake.kwargs["tags"])
    assert fake.kwargs["config"]["model"]["name"] == "rnn"
    assert any("val/acc" in data for _, data in fake.logged)
    assert fake.summary["status"] == "completed" and fake.finished
    assert summary["status"] == "completed"


def test_wandb_failure_never_loses_local_files(compose_cfg, tmp_path, monkeypatch):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("wandb service unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    out = tmp_path / "run"
    summary = run(compose_cfg("logger=wandb", output_dir=out))
    assert summary["status"] == "completed"
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert len(pd.read_csv(out / "metrics.csv")) >= 3


def test_wandb_failure_mid_run_is_contained(compose_cfg, tmp_path, monkeypatch):
    import wandb

    class Flaky(_FakeRun):
        def log(self, data, step):
            raise OSError("disk full in wandb dir")

    monkeypatch.setattr(wandb, "init", lambda **kw: Flaky(**kw))
    out = tmp_path / "run"
    assert run(compose_cfg("logger=wandb", output_dir=out))["status"] == "completed"
    assert (out / "metrics.csv").exists()


@pytest.mark.slow
def test_wandb_offline_for_real(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert run(compose_cfg("logger=wandb", "logger.mode=offline", output_dir=out))["status"] == "completed"
    assert list(out.glob("wandb/offline-run-*"))


def test_wandb_mode_from_the_environment_is_respected(compose_cfg, tmp_path, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_FakeRun(**kw)) or runs[-1])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run(compose_cfg("logger=wandb", output_dir=tmp_path / "env"))
    run(compose_cfg("logger=wandb", "logger.mode=offline", output_dir=tmp_path / "explicit"))
    # null leaves the mode to W&B, which reads WANDB_MODE; an explicit logger.mode wins over it
    assert [r.kwargs["mode"] for r in runs] == [None, "offline"]
    assert runs[0].kwargs["settings"].init_timeout == 30.0


@pytest.mark.slow
def test_unreachable_wandb_server_costs_the_timeout_once_and_the_run_completes(compose_cfg, tmp_path, monkeypatch,
                                                                                caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    summary = run(compose_cfg("logger=wandb", "logger.mode=online", "logger.init_timeout_s=3", output_dir=out))
    assert summary["status"] == "completed" and (out / "metrics.csv").exists()
    assert caplog.text.count("W&B mirror disabled") == 1
