"""Every experiment preset composes, names its paper row, matches results/expected, and runs two steps."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from helpers import REPO, write_tiny_har
from rnnrepro.api import run
from rnnrepro.config import validate

PRESETS = sorted(str(p.relative_to(REPO / "conf" / "experiment"))[:-5]
                 for p in (REPO / "conf" / "experiment").rglob("*.yaml"))
# The generated fixtures are not the canonical files; tiny models keep vocabulary-sized layers cheap.
DATA_OVERRIDES = {"ptb_word": ["data.verify_checksums=false", "data.batch_size=4", "data.bptt=5"],
                  "pcifar10": ["data.verify_checksums=false", "data.batch_size=32"],
                  "npcifar10": ["data.verify_checksums=false", "data.batch_size=32"]}
EXPECTED = pd.concat([pd.read_csv(p) for p in sorted((REPO / "results" / "expected").glob("*.csv"))])


def test_there_are_presets_for_every_expected_row():
    assert len(PRESETS) >= 11
    missing = set(EXPECTED.experiment) - set(PRESETS)
    assert not missing, f"results/expected names presets that do not exist: {missing}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_header_matches_expected_values(preset):
    text = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_\n# Paper: "), "presets start with a header naming the paper"
    assert re.search(r"^# Paper: .+ row \".+\"", text, re.M), "the header names the table row"
    reported = re.search(r"^# Reported: ([0-9.]+|not found)", text, re.M)
    assert reported, "the header states the reported value (or 'not found')"
    rows = EXPECTED[EXPECTED.experiment == preset]
    if reported.group(1) == "not found":
        assert rows.empty or rows.reported.isna().all()
    else:
        assert len(rows) == 1 and float(reported.group(1)) == pytest.approx(float(rows.reported.iloc[0]))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_two_steps(preset, compose_cfg, tmp_path):
    overrides = [f"experiment={preset}", "trainer.max_steps=2", "trainer.max_epochs=10",
                 "trainer.limit_eval_batches=1", "data.eval_batch_size=16", "trainer.progress_bar=false",
                 "trainer.device=cpu"]
    dataset = compose_cfg(*overrides, tiny=False).data.name
    extra = list(DATA_OVERRIDES.get(dataset, []))
    if dataset == "har2":
        extra.append(f"data.root={write_tiny_har(tmp_path / 'har')}")
    cfg = compose_cfg(*overrides, *extra, tiny=False)
    typed = validate(cfg)
    assert cfg.meta.experiment == preset and cfg.meta.paper and cfg.meta.table and cfg.meta.row
    assert typed.model.hidden_size >= 1
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["experiment"] == preset and summary["paper"] == cfg.meta.paper
    if summary["dataset"] in ("smnist", "pmnist"):
        assert len(summary["data"]["permutation_sha1"]) == 40
    rows = EXPECTED[EXPECTED.experiment == preset]
    if not rows.empty and "pMNIST" in set(rows.column):
        assert summary["data"]["permutation"] != "identity"
    assert Path(summary["output_dir"], "metrics.csv").exists()
