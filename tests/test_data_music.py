"""Polyphonic music: .mat and pickle readers, next-frame batches with masks, the metric, real JSB."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import SHARED_DATA, write_tiny_music
from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import build_datamodule
from rnnrepro.data.lm import ChecksumError
from rnnrepro.tasks import build_task
from rnnrepro.tasks.base import Meter

REAL_MUSIC = SHARED_DATA / "music"


def _data(compose_cfg, root, *overrides):
    cfg = compose_cfg("dataset=jsb", f"data.root={root}", "data.download=false", *overrides)
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    return data


def test_mat_and_pickle_give_identical_rolls(compose_cfg, tmp_path):
    raw = write_tiny_music(tmp_path)
    mat = _data(compose_cfg, tmp_path, "data.verify_checksums=false")
    pkl = _data(compose_cfg, tmp_path, "data.file_format=pickle")
    assert mat.describe()["sizes"] == {"train": 6, "val": 3, "test": 2}
    assert all(torch.equal(a, b) for a, b in zip(mat.pieces, pkl.pieces))
    first = raw["train"][0]
    for t, pitches in enumerate(first):
        assert sorted((torch.nonzero(mat.pieces[0][t]).flatten() + 21).tolist()) == pitches


def test_batches_predict_the_next_frame_with_masks(compose_cfg, tmp_path):
    write_tiny_music(tmp_path)
    data = _data(compose_cfg, tmp_path, "data.verify_checksums=false")
    idx = data.splits["train"][:3]
    batch = data.make_batch(idx)
    lengths = [data.pieces[i].shape[0] - 1 for i in idx.tolist()]
    assert batch["x"].shape == (3, max(lengths), 88) and batch["mask"].sum(1).tolist() == lengths
    for b, i in enumerate(idx.tolist()):
        n = lengths[b]
        assert torch.equal(batch["x"][b, :n], data.pieces[i][:-1])
        assert torch.equal(batch["y"][b, :n], data.pieces[i][1:])
        assert not batch["x"][b, n:].any() and not batch["mask"][b, n:].any()


def test_half_probability_scores_88_ln2_per_frame(compose_cfg, tmp_path):
    write_tiny_music(tmp_path)
    data = _data(compose_cfg, tmp_path, "data.verify_checksums=false")
    task, meter = build_task(data.spec.task), Meter()
    for batch in data.eval_batches("test"):
        task.update(meter, torch.zeros_like(batch["y"]), batch)  # logits 0: p = 0.5
    assert task.compute(meter)["nll"] == pytest.approx(88 * math.log(2), rel=1e-6)


def test_checksum_mismatch_deletes_nothing(compose_cfg, tmp_path):
    write_tiny_music(tmp_path)
    with pytest.raises(ChecksumError, match="dc87109f2b96bd44f9ce21d117766594"):
        _data(compose_cfg, tmp_path)
    assert (tmp_path / "music" / "JSB_Chorales.mat").exists()


@pytest.mark.skipif(not REAL_MUSIC.exists(), reason="shared music files not present")
@pytest.mark.parametrize("name, sizes", [("jsb", (229, 76, 77)), ("nottingham", (694, 173, 170)),
                                         ("musedata", (524, 135, 124)), ("pianomidi", (87, 12, 25))])
def test_real_music_files_load_with_expected_sizes(compose_cfg, name, sizes):
    cfg = compose_cfg(f"dataset={name}", f"data.root={SHARED_DATA}", "data.download=false")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    desc = data.describe()
    assert tuple(desc["sizes"][k] for k in ("train", "val", "test")) == sizes
    if name == "jsb":
        assert desc["frames"] == {"train": 13_807, "val": 4_602, "test": 4_725}
        lengths = [data.pieces[i].shape[0] for i in data.splits["train"].tolist()]
        assert (min(lengths), max(lengths)) == (25, 129)


@pytest.mark.skipif(not REAL_MUSIC.exists(), reason="shared music files not present")
def test_short_lstm_run_on_real_jsb_improves_validation(compose_cfg, tmp_path):
    out = tmp_path / "jsb"
    summary = run(compose_cfg("dataset=jsb", f"data.root={SHARED_DATA}", "data.download=false", "model=lstm",
                              "model.hidden_size=64", "data.batch_size=8", "optimizer.lr=1e-2",
                              "trainer.max_epochs=2", "trainer.max_steps=null", "trainer.limit_eval_batches=null",
                              tiny=False, output_dir=out))
    import pandas as pd

    val = pd.read_csv(out / "metrics.csv").query("split == 'val'")
    assert summary["metric"] == "nll" and summary["status"] == "completed"
    assert val.nll.iloc[-1] < val.nll.iloc[0] < 88 * math.log(2)
    assert summary["test_at_best_val"] < 15  # far below 61 (p = 0.5), on the way to the papers' ~8.5


@pytest.mark.parametrize("file_format", ["mat", "pickle"])
def test_corrupt_file_is_named_not_a_traceback(compose_cfg, tmp_path, file_format):
    write_tiny_music(tmp_path)
    path = next((tmp_path / "music").glob("JSB*.mat" if file_format == "mat" else "JSB*.pickle"))
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(ChecksumError, match=rf"{path.name} cannot be read as .*Nothing was deleted"):
        _data(compose_cfg, tmp_path, "data.verify_checksums=false", f"data.file_format={file_format}")
    assert path.exists()
