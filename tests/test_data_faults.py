"""Damaged data files for the formats whose own tests do not cover them (issue 13's fault matrix): HAR text, TIMIT .pt,
CIFAR-10 pickles with checksums off, WikiText-2 and character-level PTB text. Each damage (truncated, random bytes,
empty, swapped, wrong contents) must stop the run before any run file is written, with an error naming the damaged
file, and leave that file as it was. MNIST, PTB, music and ATIS have theirs in test_data_<name>.py."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

from helpers import (
    write_tiny_cifar,
    write_tiny_har,
    write_tiny_ptb,
    write_tiny_ptb_char,
    write_tiny_timit,
    write_tiny_wikitext2,
)
from rnnrepro.api import RUN_FILES, run
from rnnrepro.data.har import har_files
from rnnrepro.data.lm import ChecksumError


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())


def empty(path):
    path.write_bytes(b"")


def har(split, index):
    return lambda root: root / os.path.relpath(har_files(str(root), split)[index], root)


def swap_with(other):
    def damage(path):
        other_path = path.parent / other
        a, b = path.read_bytes(), other_path.read_bytes()
        path.write_bytes(b)
        other_path.write_bytes(a)
    return damage


def swap_files(first, second):
    """The contents of two files of the root exchanged; the first one is the file the error must name."""
    def damage(root):
        a, b = first(root), second(root)
        data_a, data_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(data_b)
        b.write_bytes(data_a)
        return a
    return damage


def timit_contents(contents):
    def damage(path):
        torch.save(contents, path)
    return damage


def cifar_contents(contents):
    def damage(path):
        with open(path, "wb") as f:
            pickle.dump(contents, f)
    return damage


def canonical_sized_wikitext2(root):
    """The toy training file, and valid/test of synthetic text at the canonical sizes (lines, words)."""
    write_tiny_wikitext2(root)
    for split, (lines, words) in {"valid": (3_760, 213_886), "test": (4_358, 241_211)}.items():
        per_line, extra = divmod(words, lines)
        text = "".join(" ".join(["w"] * (per_line + (i < extra))) + "\n" for i in range(lines))
        (root / "wikitext-2" / f"wiki.{split}.tokens").write_text(text)


TIMIT_X = torch.zeros(4, 6, 129)
# (dataset, fixture writer, the damaged file (a function of the root), the damage, extra overrides, message)
CASES = {
    "har-truncated-signal": ("har2", write_tiny_har, har("train", 0), truncate, [], "cannot be read"),
    "har-random-bytes": ("har2", write_tiny_har, har("train", 4), random_bytes, [], "cannot be read"),
    "har-empty-labels": ("har2", write_tiny_har, har("test", -2), empty, [], "is empty"),
    "har-signal-swapped-across-splits": ("har2", write_tiny_har, swap_files(har("train", 3), har("test", 3)), None,
                                         [], "40 rows x 128 were expected"),
    "har-labels-swapped-with-subjects": ("har2", write_tiny_har, swap_files(har("train", -2), har("train", -1)),
                                         None, [], "outside 1..6"),
    "har-not-the-release-size": ("har2", write_tiny_har, har("train", -2), None, ["data.verify_checksums=true"],
                                 "release's train split has 7352"),
    "timit-truncated": ("timit", write_tiny_timit, lambda r: r / "timit" / "train.pt", truncate, [], "cannot be read"),
    "timit-random-bytes": ("timit", write_tiny_timit, lambda r: r / "timit" / "val.pt", random_bytes, [],
                           "tensors only"),
    "timit-empty": ("timit", write_tiny_timit, lambda r: r / "timit" / "test.pt", empty, [], "cannot be read"),
    "timit-other-keys": ("timit", write_tiny_timit, lambda r: r / "timit" / "train.pt",
                         timit_contents({"features": TIMIT_X}), [], "without the expected tensors"),
    "timit-other-bins": ("timit", write_tiny_timit, lambda r: r / "timit" / "train.pt",
                         timit_contents({"x": torch.zeros(4, 6, 128), "lengths": torch.full((4,), 6)}), [],
                         "shape (4, 6, 128)"),
    "timit-lengths-beyond-x": ("timit", write_tiny_timit, lambda r: r / "timit" / "val.pt",
                               timit_contents({"x": TIMIT_X, "lengths": torch.full((4,), 9)}), [], "6 frames"),
    "timit-nan": ("timit", write_tiny_timit, lambda r: r / "timit" / "test.pt",
                  timit_contents({"x": TIMIT_X.clone().fill_(float("nan")), "lengths": torch.full((4,), 6)}), [],
                  "NaN"),
    "cifar-truncated": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "data_batch_1",
                        truncate, ["data.verify_checksums=false"], "cannot be read"),
    "cifar-random-bytes": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "data_batch_3",
                           random_bytes, ["data.verify_checksums=false"], "cannot be read"),
    "cifar-empty": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "test_batch", empty,
                    ["data.verify_checksums=false"], "cannot be read"),
    "cifar-other-shape": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "data_batch_2",
                          cifar_contents({"data": np.zeros((3, 1024), np.uint8), "labels": [0, 1, 2]}),
                          ["data.verify_checksums=false"], "uint8 (N, 3072)"),
    "cifar-labels-out-of-range": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "test_batch",
                                  cifar_contents({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 10]}),
                                  ["data.verify_checksums=false"], "labels in 0..9"),
    "cifar-swapped-md5-on": ("pcifar10", write_tiny_cifar, lambda r: r / "cifar-10-batches-py" / "data_batch_1",
                             swap_with("test_batch"), [], "differs from the canonical release"),
    "wikitext-random-bytes": ("wikitext2", write_tiny_wikitext2, lambda r: r / "wikitext-2" / "wiki.valid.tokens",
                              random_bytes, ["data.verify_checksums=false"], "UTF-8"),
    "wikitext-empty": ("wikitext2", write_tiny_wikitext2, lambda r: r / "wikitext-2" / "wiki.test.tokens", empty,
                       ["data.verify_checksums=false"], "is empty"),
    "wikitext-truncated": ("wikitext2", canonical_sized_wikitext2, lambda r: r / "wikitext-2" / "wiki.valid.tokens",
                           truncate, [], "1877 lines / 106943 words; the canonical file has 3760 / 213886"),
    "ptb-char-random-bytes": ("ptb_char", write_tiny_ptb_char, lambda r: r / "ptb" / "ptb.char.train.txt",
                              random_bytes, ["data.verify_checksums=false"], "UTF-8"),
    "ptb-char-empty": ("ptb_char", write_tiny_ptb_char, lambda r: r / "ptb" / "ptb.char.valid.txt", empty,
                       ["data.verify_checksums=false"], "is empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_file_is_named_before_any_run_file_and_kept(case, compose_cfg, tmp_path):
    dataset, write, target, damage, overrides, message = CASES[case]
    root = tmp_path / "data"
    root.mkdir()
    write(root)
    damaged = target(root)  # a swap is done by the target itself; a size check damages nothing
    if damage is not None:
        damage(damaged)
    before = damaged.read_bytes()
    extra = ["data.verify_checksums=false"] if dataset == "har2" and not overrides else []
    out = tmp_path / "run"
    with pytest.raises(ChecksumError, match=re.escape(message)) as caught:
        run(compose_cfg(f"dataset={dataset}", f"data.root={root}", "data.download=false", *extra, *overrides,
                        "data.batch_size=4", output_dir=out))
    assert str(damaged) in str(caught.value), "the error names the damaged file"
    assert damaged.read_bytes() == before, "nothing is deleted or rewritten"
    assert not any((out / name).exists() for name in RUN_FILES), "no run file is written"


def test_wikitext_training_file_is_checked_by_its_token_count(compose_cfg, tmp_path):
    """valid/test at their canonical sizes (synthetic text), the training file a toy: the train count catches it."""
    canonical_sized_wikitext2(tmp_path)
    folder = tmp_path / "wikitext-2"
    with pytest.raises(ChecksumError, match="2088628") as caught:
        run(compose_cfg("dataset=wikitext2", f"data.root={tmp_path}", "data.download=false", "data.batch_size=4",
                        output_dir=tmp_path / "run"))
    assert str(folder / "wiki.train.tokens") in str(caught.value)


def test_ptb_char_fixture_with_word_files_still_reads(compose_cfg, tmp_path):
    """The checks let the intact fixture through (no false alarm on a small but well-formed file)."""
    write_tiny_ptb_char(write_tiny_ptb(tmp_path))
    summary = run(compose_cfg("dataset=ptb_char", f"data.root={tmp_path}", "data.download=false",
                              "data.verify_checksums=false", "data.batch_size=4", "data.bptt=5",
                              output_dir=tmp_path / "run"))
    assert summary["status"] == "completed"
