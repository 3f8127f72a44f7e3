"""Every experiment preset composes, names its paper row, matches results/expected, and runs two steps."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from helpers import (
    REPO,
    write_tiny_atis,
    write_tiny_har,
    write_tiny_music,
    write_tiny_ptb,
    write_tiny_ptb_char,
    write_tiny_timit,
    write_tiny_wikitext2,
)
from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data.music import MUSIC_FILES

PRESETS = sorted(str(p.relative_to(REPO / "conf" / "experiment"))[:-5]
                 for p in (REPO / "conf" / "experiment").rglob("*.yaml"))
# The generated fixtures are not the canonical files; tiny models keep vocabulary-sized layers cheap.
LM_TINY = ["data.verify_checksums=false", "data.batch_size=4", "data.bptt=5"]
DATA_OVERRIDES = {"ptb_word": LM_TINY, "ptb_char": LM_TINY, "wikitext2": LM_TINY,
                  "pcifar10": ["data.verify_checksums=false", "data.batch_size=32"],
                  "npcifar10": ["data.verify_checksums=false", "data.batch_size=32"],
                  "atis": ["data.verify_checksums=false"], "har2": ["data.verify_checksums=false"],
                  "copy_memory": ["data.n_train=256", "data.n_val=64", "data.n_test=64"],
                  **{name: ["data.verify_checksums=false"] for name in MUSIC_FILES}}


def _music_writer(name):
    mat, _, pickle_name = MUSIC_FILES[name]

    def write(root):
        write_tiny_music(root, mat, pickle_name)
        return root

    return write


# Datasets whose tiny fixture is written into a fresh data root per test (the session root holds MNIST, PTB, CIFAR).
DATA_FIXTURES = {"har2": write_tiny_har, "atis": write_tiny_atis, "timit": write_tiny_timit,
                 "wikitext2": write_tiny_wikitext2,
                 "ptb_char": lambda root: write_tiny_ptb_char(write_tiny_ptb(root)),  # char and word files, as PTB
                 **{name: _music_writer(name) for name in MUSIC_FILES}}
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
        # a preset may fill several cells (e.g. valid and test); the header's value is one of them
        assert not rows.empty and pytest.approx(float(reported.group(1))) in rows.reported.tolist()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_two_steps(preset, compose_cfg, tmp_path):
    overrides = [f"experiment={preset}", "trainer.max_steps=2", "trainer.max_epochs=10",
                 "trainer.limit_eval_batches=1", "data.eval_batch_size=16", "trainer.progress_bar=false",
                 "trainer.device=cpu"]
    dataset = compose_cfg(*overrides, tiny=False).data.name
    extra = list(DATA_OVERRIDES.get(dataset, []))
    if dataset in DATA_FIXTURES:
        extra.append(f"data.root={DATA_FIXTURES[dataset](tmp_path / 'data')}")
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
