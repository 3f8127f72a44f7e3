"""String memorisation (copy) with a curriculum on the length: the OK-RTRL task (spec online_rtrl §4.1; official code
``OK/OK_rank_r_unbiased.py``, function ``cp_data``).

Alphabet of 4 symbols: 0 and 1 are data bits, 2 the start marker, 3 blank. A sequence of length T_seq has 2 T_seq + 2
steps (k from 0)::

    input   2  b1 b2 .. bT  3  3 .. 3          marker, T_seq random bits, T_seq + 1 blanks
    target  3  3  3  .. 3   2  b1 .. bT        blanks for k = 0..T_seq, then the input delayed by T_seq + 1 steps

``data.echo_marker=false`` (harness option) puts a blank instead of the marker at k = T_seq + 1 (the bits keep their
lag). The loss is taken at every step (``data.loss_positions=all``, OK code); ``recall`` emits ``mask`` = the output
phase k >= T_seq + 1 (k >= T_seq + 2 without the marker echo). With ``recall`` a batch in which no stream is in its
output phase (e.g. the very first step when chunk_len = 1) has an all-False mask: its loss is zero (no target).

Training stream: ``data.batch_size`` = B independent streams; each starts a fresh sequence as soon as its current one
ends, and every batch carries ``reset`` (B, L): True exactly at the first step (k = 0) of each new sequence, where the
state (and an online algorithm's influence matrix) must be set to zero (the OK code zeroes h and G there). The length
of a new sequence is T_seq = max(1, T - U), U uniform on {0..data.len_jitter} (4: OK code, T-4..T; 5: seed summary).
The stream is infinite; ``data.steps_per_epoch`` only sets the logging unit (num_train_batches = steps_per_epoch //
chunk_len). Its randomness comes from a torch.Generator seeded from the run seed, saved in ``checkpoint_state``.

Curriculum (task side, so every training algorithm can use it): ``observe(step_losses)`` is called after each
training batch with the batch-mean cross-entropy (nats) of each step; per step, in order,
``ema = decay * ema + (1 - decay) * loss / ln 2`` (bits; decay 0.999, initialised to 1.0 = -log2(0.5)). At every step
at which at least one stream starts a new sequence, *before* any of that step's lengths are drawn: if ema <
threshold_bits (0.15), T += 1 and ema = ema_reset (0.3). This is checked once per step, so T grows at most by one per
step however many streams start together. The OK code checks inside its loop over streams, but since the reset value
0.3 is above the threshold, only the first starting stream can trigger, and every stream starting at that step
(including the trigger) draws its length with the new T: identical to the rule here. (Only with ema_reset <
threshold_bits would the official loop add one per starting stream; this module still adds one per step.)
``curriculum.metric=recall_positions`` (harness option, not in the OK code) averages only over the streams in their
output phase at each step and leaves the EMA unchanged at steps with none; it needs the per-stream (B, L) losses.

Laziness: ``train_batches`` is a generator that builds each chunk of ``data.chunk_len`` steps only when the previous one
has been consumed. With chunk_len = 1 (default) the curriculum has seen every step's loss before the next step is
generated -- exactly the official order (generate step t with the current EMA, train, update the EMA). With
chunk_len = L > 1, the sequence starts inside a chunk are checked against the EMA as of the start of that chunk, so the
T check lags by fewer than L steps (and T grows at most once per chunk while ema_reset >= threshold_bits).

Evaluation: ``eval_batches(split)`` yields ``n_val`` (``n_test``) fixed sequences of exactly the current curriculum T
(2T + 2 steps each, each batch starting from a fresh state; no ``reset`` key), seeded by (``data.split_seed``, split),
in batches of ``eval_batch_size``. Metric: bits per character over every position (or over the recall mask).
Selection (``best.pt``, ``test_at_best_val``): the bpc of different evaluations is measured at different T and is not
comparable, so the best validation is the one at the largest curriculum T, and among those the lowest bpc.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnrepro.data.base import DataConfig, DataSpec, SequenceDataModule
from rnnrepro.schema import register_schema, require
from rnnrepro.tasks import TaskType

BIT_SYMBOLS, MARKER, BLANK, VOCAB = 2, 2, 3, 4
_STREAM_TAG = 0x4F4B5354  # separates the training-stream seed from other uses of the run seed
_EVAL_SPLITS = {"val": 1, "test": 2}


# ------------------------------------------------------------------------------------------------- config schema
class CurriculumMetric(str, Enum):
    all_positions = "all_positions"
    recall_positions = "recall_positions"


class LossPositions(str, Enum):
    all = "all"
    recall = "recall"


@dataclass
class CurriculumConfig:
    """String-memorisation curriculum (OK code): an EMA of the per-step cross-entropy in bits; when a stream starts a
    new sequence and the EMA is below threshold_bits, T += 1 and the EMA is set to ema_reset."""

    ema_decay: float = 0.999
    ema_init: float = 1.0  # -log2(0.5)
    threshold_bits: float = 0.15  # 0 disables the curriculum (T stays at initial_T)
    ema_reset: float = 0.3
    metric: CurriculumMetric = CurriculumMetric.all_positions  # recall_positions: harness option, not in the OK code

    def __post_init__(self) -> None:
        require(0 < self.ema_decay < 1, "data.curriculum.ema_decay", f"must be in (0, 1), got {self.ema_decay}")
        for key in ("ema_init", "threshold_bits", "ema_reset"):
            require(getattr(self, key) >= 0, f"data.curriculum.{key}", f"must be >= 0, got {getattr(self, key)}")


@register_schema("data", "string_memo")
@dataclass
class StringMemoDataConfig(DataConfig):
    _target_: str = "rnnrepro.data.string_memo.StringMemo"
    name: str = "string_memo"
    batch_size: int = 16  # independent streams
    eval_batch_size: int = 256
    chunk_len: int = 1  # steps per training batch; 1 = the OK code's order (curriculum sees every step's loss)
    steps_per_epoch: int = 1000  # an "epoch" is a logging unit of the infinite stream
    len_jitter: int = 4  # T_seq = max(1, T - U), U ~ uniform{0..len_jitter}; 4 = OK code, 5 = seed summary
    initial_T: int = 1
    echo_marker: bool = True  # the output phase reproduces the start marker, then the bits (OK code)
    loss_positions: LossPositions = LossPositions.all  # recall: mask = output phase only
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    n_val: int = 256  # evaluation sequences of exactly the current T
    n_test: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.chunk_len >= 1, "data.chunk_len", f"must be >= 1, got {self.chunk_len}")
        require(self.steps_per_epoch >= self.chunk_len, "data.steps_per_epoch",
                 f"must be >= data.chunk_len ({self.chunk_len}), got {self.steps_per_epoch}")
        require(self.len_jitter >= 0, "data.len_jitter", f"must be >= 0, got {self.len_jitter}")
        require(self.initial_T >= 1, "data.initial_T", f"must be >= 1, got {self.initial_T}")
        for key in ("n_val", "n_test"):
            require(getattr(self, key) >= 1, f"data.{key}", f"must be >= 1, got {getattr(self, key)}")


def _value(x):
    return getattr(x, "value", x)  # enums of typed configs -> their string


def string_memo_sequence(bits: Tensor, echo_marker: bool = True) -> tuple[Tensor, Tensor]:
    """bits (..., T) in {0, 1} -> (input, target), each (..., 2T + 2) long: see the module docstring."""
    t = bits.shape[-1]
    inp = torch.full((*bits.shape[:-1], 2 * t + 2), BLANK, dtype=torch.long)
    tgt = torch.full_like(inp, BLANK)
    inp[..., 0] = MARKER
    inp[..., 1 : t + 1] = bits
    if echo_marker:
        tgt[..., t + 1] = MARKER
    tgt[..., t + 2 :] = bits
    return inp, tgt


def sample_length(T: int, len_jitter: int, generator: torch.Generator) -> int:
    """T_seq = max(1, T - U), U uniform on {0, .., len_jitter}."""
    u = int(torch.randint(0, len_jitter + 1, (1,), generator=generator))
    return max(1, T - u)


class StringMemo(SequenceDataModule):
    carry_state = True  # training chunks continue the B streams (cut by ``reset`` at sequence starts)
    eval_carry_state = False  # evaluation batches are independent sets of fresh sequences
    continuous_stream = True  # epochs are logging units: the streams (and the state) never restart

    def __init__(self, cfg, run_seed: int) -> None:
        super().__init__(cfg, run_seed)
        self.B = int(cfg.batch_size)
        self.chunk_len = int(cfg.chunk_len)
        self.len_jitter = int(cfg.len_jitter)
        self.echo_marker = bool(cfg.echo_marker)
        self.loss_positions = str(_value(cfg.loss_positions))
        cur = cfg.curriculum
        self.ema_decay, self.threshold = float(cur.ema_decay), float(cur.threshold_bits)
        self.ema_reset, self.curriculum_metric = float(cur.ema_reset), str(_value(cur.metric))
        self.spec = DataSpec(input_size=VOCAB, output_size=VOCAB, task=TaskType.classify_each,
                             seq_len=self.chunk_len, metric="bpc",
                             selection=(("curriculum_T", "max"), ("bpc", "min")))
        self._init_streams()

    # --------------------------------------------------------------------------------------------- stream state
    def _init_streams(self) -> None:
        self.T = int(self.cfg.initial_T)
        self.ema = float(self.cfg.curriculum.ema_init)
        seed = int(np.random.SeedSequence([int(self.run_seed), _STREAM_TAG]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(seed)
        cap = 2 * self.T + 2
        self._inp = torch.full((self.B, cap), BLANK, dtype=torch.long)
        self._tgt = torch.full((self.B, cap), BLANK, dtype=torch.long)
        self._len = torch.zeros(self.B, dtype=torch.long)  # 0: every stream starts a sequence at the first step
        self._pos = torch.zeros(self.B, dtype=torch.long)
        self._tseq = torch.zeros(self.B, dtype=torch.long)
        self.steps_generated = 0
        self.sequences_started = 0
        self._last_recall: Tensor | None = None  # (B, L) output-phase positions of the last generated chunk

    def setup(self) -> None:
        """Nothing to load (generated); the streams are initialised in the constructor and restored on resume."""

    def _maybe_advance(self) -> None:
        if self.ema < self.threshold:
            self.T += 1
            self.ema = self.ema_reset

    def _start(self, b: int) -> None:
        t_seq = sample_length(self.T, self.len_jitter, self.generator)
        bits = torch.randint(0, BIT_SYMBOLS, (t_seq,), generator=self.generator)
        inp, tgt = string_memo_sequence(bits, self.echo_marker)
        n = inp.numel()
        if n > self._inp.shape[1]:
            pad = torch.full((self.B, n - self._inp.shape[1]), BLANK, dtype=torch.long)
            self._inp, self._tgt = torch.cat([self._inp, pad], 1), torch.cat([self._tgt, pad.clone()], 1)
        self._inp[b, :n], self._tgt[b, :n] = inp, tgt
        self._len[b], self._pos[b], self._tseq[b] = n, 0, t_seq
        self.sequences_started += 1

    def _step(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        starting = self._pos >= self._len
        if bool(starting.any()):
            self._maybe_advance()  # once per step, before any of this step's lengths are drawn
            for b in starting.nonzero().flatten().tolist():
                self._start(b)
        rows = torch.arange(self.B)
        x, y = self._inp[rows, self._pos], self._tgt[rows, self._pos]
        recall = self._pos >= self._tseq + (1 if self.echo_marker else 2)
        self._pos += 1
        self.steps_generated += 1
        return x, y, starting, recall

    def _chunk(self, length: int) -> dict:
        xs, ys, resets, recalls = zip(*(self._step() for _ in range(length)))
        x = torch.stack(xs, 1)
        recall = torch.stack(recalls, 1)
        self._last_recall = recall
        batch = {"x": F.one_hot(x, VOCAB).float(), "y": torch.stack(ys, 1), "reset": torch.stack(resets, 1)}
        if self.loss_positions == "recall":
            batch["mask"] = recall
        return batch

    # ------------------------------------------------------------------------------------------ data interface
    def num_train_batches(self, epoch: int = 0) -> int:
        return int(self.cfg.steps_per_epoch) // self.chunk_len

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """Continues the streams from their current state (the epoch number is only a logging unit); each chunk is
        generated when the previous one has been consumed."""
        for _ in range(start_batch, self.num_train_batches()):
            yield self._chunk(self.chunk_len)

    def eval_batches(self, split: str) -> Iterator[dict]:
        if split not in _EVAL_SPLITS:
            raise KeyError(f"unknown split {split!r}; have {sorted(_EVAL_SPLITS)}")
        n = int(self.cfg.n_val if split == "val" else self.cfg.n_test)
        seed = int(np.random.SeedSequence([int(self.cfg.split_seed), _EVAL_SPLITS[split]]).generate_state(1)[0])
        bits = torch.randint(0, BIT_SYMBOLS, (n, self.T), generator=torch.Generator().manual_seed(seed))
        inp, tgt = string_memo_sequence(bits, self.echo_marker)
        recall = torch.zeros_like(inp, dtype=torch.bool)
        recall[:, self.T + (1 if self.echo_marker else 2) :] = True
        size = int(self.cfg.eval_batch_size)
        for i in range(0, n, size):
            batch = {"x": F.one_hot(inp[i : i + size], VOCAB).float(), "y": tgt[i : i + size]}
            if self.loss_positions == "recall":
                batch["mask"] = recall[i : i + size]
            yield batch

    def eval_extras(self, split: str) -> dict[str, float]:
        return {"curriculum_T": float(self.T)}  # the evaluation sequences have exactly this length

    # ---------------------------------------------------------------------------------------------- curriculum
    def observe(self, step_losses: Tensor) -> None:
        """Updates the curriculum EMA step by step. ``step_losses``: (L,) batch-mean cross-entropy in nats of each
        step of the last training batch, or the per-stream (B, L) losses (needed for curriculum.metric =
        recall_positions). Fewer losses than the batch's steps are a prefix: an online algorithm whose budget ended
        inside the batch trained only on its first steps."""
        losses = torch.as_tensor(step_losses).detach().to("cpu", torch.float64)
        if self._last_recall is not None and losses.shape[-1] > self._last_recall.shape[1]:
            raise ValueError(f"observe: got losses for {losses.shape[-1]} steps, the last batch had "
                             f"{self._last_recall.shape[1]}")
        if self.curriculum_metric == "recall_positions":
            if losses.dim() != 2 or self._last_recall is None:
                raise ValueError("data.curriculum.metric=recall_positions needs observe() to receive the per-stream "
                                 "(B, L) losses of the last training batch")
            recall = self._last_recall[:, : losses.shape[1]].to(torch.float64)
            counts = recall.sum(0)
            values = [(float((losses[:, t] * recall[:, t]).sum() / counts[t]) if counts[t] > 0 else None)
                      for t in range(losses.shape[1])]
        else:
            per_step = losses.mean(0) if losses.dim() == 2 else losses.reshape(-1)
            values = per_step.tolist()
        for v in values:
            if v is not None:
                self.ema = self.ema_decay * self.ema + (1.0 - self.ema_decay) * v / math.log(2.0)

    def train_extras(self) -> dict[str, float]:
        return {"curriculum_T": float(self.T), "curriculum_ema_bits": float(self.ema)}

    # ---------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> dict:
        return {"T": self.T, "ema": self.ema, "generator": self.generator.get_state(), "inp": self._inp.clone(),
                "tgt": self._tgt.clone(), "len": self._len.clone(), "pos": self._pos.clone(),
                "tseq": self._tseq.clone(), "steps_generated": self.steps_generated,
                "sequences_started": self.sequences_started,
                "last_recall": None if self._last_recall is None else self._last_recall.clone()}

    def load_checkpoint_state(self, state: dict) -> None:
        if not state:
            return
        if state["len"].shape[0] != self.B:
            raise RuntimeError(f"checkpoint has {state['len'].shape[0]} streams, data.batch_size is {self.B}")
        self.T, self.ema = int(state["T"]), float(state["ema"])
        self.generator.set_state(state["generator"])
        self._inp, self._tgt = state["inp"].clone(), state["tgt"].clone()
        self._len, self._pos, self._tseq = state["len"].clone(), state["pos"].clone(), state["tseq"].clone()
        self.steps_generated = int(state["steps_generated"])
        self.sequences_started = int(state["sequences_started"])
        last = state.get("last_recall")
        self._last_recall = None if last is None else last.clone()

    def describe(self) -> dict:
        cur = self.cfg.curriculum
        return {"name": self.cfg.name, "split_seed": int(self.cfg.split_seed), "curriculum_T": self.T,
                "initial_T": int(self.cfg.initial_T), "eval_seq_len": 2 * self.T + 2, "streams": self.B,
                "chunk_len": self.chunk_len, "steps_per_epoch": int(self.cfg.steps_per_epoch),
                "len_jitter": self.len_jitter, "echo_marker": self.echo_marker, "loss_positions": self.loss_positions,
                "curriculum": {"ema_decay": self.ema_decay, "ema_init": float(cur.ema_init),
                               "threshold_bits": self.threshold, "ema_reset": self.ema_reset,
                               "metric": self.curriculum_metric},
                "steps_generated": self.steps_generated, "sequences_started": self.sequences_started,
                "sizes": {"val": int(self.cfg.n_val), "test": int(self.cfg.n_test)},
                "eval_batch_size": int(self.cfg.eval_batch_size), "permutation_sha1": None}
