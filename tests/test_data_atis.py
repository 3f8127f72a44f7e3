"""ATIS slot filling: the is13 fold files, padded/masked batches, span-level F1 (conlleval convention)."""

from __future__ import annotations

import pytest
import torch

from helpers import ATIS_LABELS, SHARED_DATA, write_tiny_atis
from rnnrepro.api import run
from rnnrepro.config import validate
from rnnrepro.data import build_datamodule
from rnnrepro.data.lm import ChecksumError
from rnnrepro.tasks.base import Meter, Tag, iob_chunks

REAL_ATIS = SHARED_DATA / "atis"
LABELS = ATIS_LABELS


@pytest.mark.parametrize("tags, spans", [
    (["O", "B-city", "I-city", "O"], {(1, 3, "city")}),
    (["B-city", "B-city"], {(0, 1, "city"), (1, 2, "city")}),
    (["I-city", "I-city", "O"], {(0, 2, "city")}),  # conlleval: I- after O starts a chunk
    (["B-city", "I-date"], {(0, 1, "city"), (1, 2, "date")}),  # a type change ends the chunk
    (["O", "O"], set()),
])
def test_iob_chunks_follow_conlleval(tags, spans):
    assert iob_chunks(tags) == spans


def test_span_f1_counts_exact_matches_only():
    task, meter = Tag(labels=LABELS), Meter()
    gold = torch.tensor([[4, 0, 1, 4, 2]])  # O B-city I-city O B-date: 2 chunks
    pred = torch.tensor([[4, 0, 4, 4, 2]])  # city chunk truncated (wrong span), date right: 1 of 2 predicted right
    logits = torch.nn.functional.one_hot(pred, len(LABELS)).float() * 10
    task.update(meter, logits, {"y": gold, "mask": torch.ones_like(gold, dtype=torch.bool)})
    result = task.compute(meter)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5) and result["acc"] == pytest.approx(0.8)


def test_fixture_loads_with_padding_and_masks(compose_cfg, tmp_path):
    write_tiny_atis(tmp_path)
    cfg = compose_cfg("dataset=atis", f"data.root={tmp_path}", "data.download=false", "data.verify_checksums=false")
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    assert data.describe()["sizes"] == {"train": 6, "val": 2, "test": 2}
    assert data.spec.vocab_size == 8 and data.spec.output_size == 5 and data.spec.labels == LABELS
    batch = data.make_batch(torch.tensor([0, 1]))
    assert batch["x"].shape == (2, 5) and batch["mask"].sum(1).tolist() == [4, 5]
    assert batch["x"][0, 4] == data.pad


def test_checksum_mismatch_keeps_the_file(compose_cfg, tmp_path):
    write_tiny_atis(tmp_path)
    cfg = compose_cfg("dataset=atis", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(ChecksumError, match="baf0182e5f8b213d5d1e9048273e0e80"):
        build_datamodule(cfg.data, 0).setup()
    assert (tmp_path / "atis" / "atis.fold0.pkl.gz").exists()


@pytest.mark.skipif(not REAL_ATIS.exists(), reason="shared ATIS files not present")
@pytest.mark.parametrize("fold", range(5))
def test_real_folds_load(compose_cfg, fold):
    cfg = compose_cfg("dataset=atis", f"data.root={SHARED_DATA}", f"data.fold={fold}", "data.download=false")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    if fold == 0:
        assert data.describe()["sizes"] == {"train": 3983, "val": 995, "test": 893}
    assert data.spec.vocab_size == 573 and len(data.labels) == 127


@pytest.mark.skipif(not REAL_ATIS.exists(), reason="shared ATIS files not present")
def test_short_lstm_run_on_real_atis_improves_validation_f1(compose_cfg, tmp_path):
    import pandas as pd

    out = tmp_path / "atis"
    summary = run(compose_cfg("dataset=atis", f"data.root={SHARED_DATA}", "data.download=false", "model=lstm",
                              "model.hidden_size=64", "data.embedding_size=64", "optimizer.lr=1e-2",
                              "trainer.max_epochs=2", "trainer.max_steps=null", "trainer.eval_every_n_steps=30",
                              "trainer.limit_eval_batches=null", tiny=False, output_dir=out))
    val = pd.read_csv(out / "metrics.csv").query("split == 'val'")
    assert summary["metric"] == "f1" and summary["status"] == "completed"
    assert val.f1.iloc[-1] > val.f1.iloc[0] and summary["test_at_best_val"] > 0.5


@pytest.mark.parametrize("damage", [b"not gzip at all", None])
def test_corrupt_fold_is_named_not_a_traceback(compose_cfg, tmp_path, damage):
    import gzip

    write_tiny_atis(tmp_path)
    path = tmp_path / "atis" / "atis.fold0.pkl.gz"
    path.write_bytes(damage if damage is not None else gzip.compress(gzip.decompress(path.read_bytes())[:30]))
    cfg = compose_cfg("dataset=atis", f"data.root={tmp_path}", "data.download=false", "data.verify_checksums=false")
    with pytest.raises(ChecksumError, match="atis.fold0.pkl.gz cannot be read as an is13 ATIS fold"):
        build_datamodule(cfg.data, 0).setup()
    assert path.exists()
