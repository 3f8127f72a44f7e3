"""Losses and metric accumulators per task type (see the table in ``rnnrepro/tasks/__init__.py``)."""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor


class TaskType(str, Enum):
    classify_last = "classify_last"
    classify_each = "classify_each"
    multilabel_each = "multilabel_each"
    tag = "tag"
    regression = "regression"
    regression_each = "regression_each"


class Meter:
    """Sums over an evaluation pass; ``compute`` returns per-unit averages (weighted by targets, not batches)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0.0

    def add(self, count: float, **sums: float) -> None:
        self.count += float(count)
        for k, v in sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def averages(self) -> dict[str, float]:
        return {k: v / max(self.count, 1.0) for k, v in self.sums.items()}


class Task:
    """Base task. ``sequence_output`` says whether the head reads every step or only the last state."""

    type: TaskType
    sequence_output: bool = False
    metric: str = "loss"  # the metric selected on validation
    mode: str = "min"  # "max" when larger is better

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        raise NotImplementedError

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        raise NotImplementedError

    def compute(self, meter: Meter) -> dict[str, float]:
        return meter.averages()

    def step_losses(self, out: Tensor, batch: dict) -> Tensor:
        """(T,) the batch-mean loss of each time step, for data modules that observe training losses."""
        raise NotImplementedError(f"{type(self).__name__} does not define per-step losses")

    def is_better(self, new: float, best: float | None) -> bool:
        if best is None or not math.isfinite(best):
            return math.isfinite(new)
        return new > best if self.mode == "max" else new < best


class ClassifyLast(Task):
    """Sequence classification from the last state. ``loss="softmax_mse"`` is the SBO-RNN code's HAR-2 loss,
    ``nn.MSELoss()(softmax(logits), one_hot(y))``: the squared error averaged over the batch and the classes (the
    head's outputs: 10 with ``data.head_outputs=10``, as the code)."""

    type = TaskType.classify_last
    metric, mode = "acc", "max"

    def __init__(self, loss: str = "ce") -> None:
        if loss not in ("ce", "softmax_mse"):
            raise ValueError(f"classify_last loss must be ce or softmax_mse, got {loss!r}")
        self.loss_name = loss

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        if self.loss_name == "softmax_mse":
            target = F.one_hot(batch["y"], out.shape[-1]).to(out.dtype)
            return F.mse_loss(out.softmax(-1), target)  # mean over batch and classes, as nn.MSELoss() [code]
        return F.cross_entropy(out, batch["y"])

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        y = batch["y"]
        meter.add(y.numel(), loss=F.cross_entropy(out, y, reduction="sum"), acc=(out.argmax(-1) == y).sum())


class ClassifyEach(Task):
    """Per-step classification (language models, copy tasks). Metrics: loss in nats per target token, accuracy,
    perplexity exp(loss) and bits per token loss / ln 2, each over the tokens that carry a target (mask)."""

    type = TaskType.classify_each
    sequence_output = True

    def __init__(self, metric: str = "acc") -> None:
        if metric not in ("acc", "ppl", "bpc", "loss"):
            raise ValueError(f"classify_each metric must be acc, ppl, bpc or loss, got {metric!r}")
        self.metric, self.mode = metric, ("max" if metric == "acc" else "min")

    @staticmethod
    def _flat(out: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        logits, y = out.reshape(-1, out.shape[-1]), batch["y"].reshape(-1)
        mask = batch.get("mask")
        if mask is not None:
            keep = mask.reshape(-1)
            logits, y = logits[keep], y[keep]
        return logits, y

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        logits, y = self._flat(out, batch)
        if y.numel() == 0:  # no step of this batch carries a target (e.g. a recall mask before any recall)
            return logits.sum() * 0.0
        return F.cross_entropy(logits, y)

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        logits, y = self._flat(out, batch)
        meter.add(y.numel(), loss=F.cross_entropy(logits, y, reduction="sum"), acc=(logits.argmax(-1) == y).sum())

    def step_losses(self, out: Tensor, batch: dict) -> Tensor:
        nats = F.cross_entropy(out.transpose(1, 2), batch["y"], reduction="none")  # (B, T)
        mask = batch.get("mask")
        if mask is None:
            return nats.mean(0)
        weight = mask.to(nats.dtype)
        return (nats * weight).sum(0) / weight.sum(0).clamp(min=1)

    def compute(self, meter: Meter) -> dict[str, float]:
        avg = meter.averages()
        nats = avg.get("loss", float("nan"))
        avg["ppl"] = math.exp(min(nats, 700.0))
        avg["bpc"] = nats / math.log(2.0)
        return avg


def iob_chunks(tags: list[str]) -> set[tuple[int, int, str]]:
    """Spans (start, end, type) of an IOB tag sequence, conlleval's rules: a chunk starts at B-X, or at I-X that
    does not continue a chunk of type X; it ends before O, B-*, or a tag of another type."""
    spans, start, kind = set(), None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-") if tag != "O" else ("O", "", "")
        if start is not None and (prefix in ("B", "O") or label != kind):
            spans.add((start, i, kind))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, label
    return spans


class Tag(ClassifyEach):
    """Per-token tagging (slot filling): cross-entropy over real tokens (mask); the selection metric is span-level
    F1 (conlleval convention: a predicted chunk counts only if its span and type match a gold chunk exactly)."""

    type = TaskType.tag

    def __init__(self, metric: str = "f1", labels: list | None = None) -> None:
        if metric != "f1":
            super().__init__(metric)
        else:
            self.metric, self.mode = "f1", "max"
        self.labels = labels

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        super().update(meter, out, batch)
        if self.labels is None:
            return
        pred, gold = out.argmax(-1).tolist(), batch["y"].tolist()
        lengths = batch["mask"].sum(1).tolist() if batch.get("mask") is not None else [len(g) for g in gold]
        correct = predicted = expected = 0
        for p, g, n in zip(pred, gold, lengths):
            p_spans = iob_chunks([self.labels[i] for i in p[: int(n)]])
            g_spans = iob_chunks([self.labels[i] for i in g[: int(n)]])
            correct += len(p_spans & g_spans)
            predicted += len(p_spans)
            expected += len(g_spans)
        meter.add(0, chunks_correct=correct, chunks_predicted=predicted, chunks_gold=expected)

    def compute(self, meter: Meter) -> dict[str, float]:
        result = super().compute(meter)
        for key in ("chunks_correct", "chunks_predicted", "chunks_gold"):
            result.pop(key, None)
        if self.labels is not None:
            c, p, g = (meter.sums.get(k, 0.0) for k in ("chunks_correct", "chunks_predicted", "chunks_gold"))
            result["precision"] = c / p if p else 0.0
            result["recall"] = c / g if g else 0.0
            result["f1"] = 2 * c / (p + g) if (p + g) else 0.0
        return result


class MultilabelEach(Task):
    """Per-step multi-label (polyphonic music): Bernoulli NLL summed over keys, averaged over frames. The training
    loss is that average (``frame_mean``) or, as the Stable Recurrent Models JSB code trains, summed over each
    sequence's frames and averaged over the batch (``piece_sum``; with one piece per batch, the code's sum)."""

    type = TaskType.multilabel_each
    sequence_output = True
    metric, mode = "nll", "min"

    def __init__(self, loss: str = "frame_mean") -> None:
        if loss not in ("frame_mean", "piece_sum"):
            raise ValueError(f"multilabel_each loss must be frame_mean or piece_sum, got {loss!r}")
        self.loss_name = loss

    def _frame_nll(self, out: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
        nll = F.binary_cross_entropy_with_logits(out, batch["y"], reduction="none").sum(-1)  # (B, T)
        mask = batch.get("mask")
        mask = torch.ones_like(nll, dtype=torch.bool) if mask is None else mask
        return nll[mask], mask

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        nll, _ = self._frame_nll(out, batch)
        return nll.sum() / out.shape[0] if self.loss_name == "piece_sum" else nll.mean()

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        nll, mask = self._frame_nll(out, batch)
        meter.add(mask.sum(), nll=nll.sum(), loss=nll.sum())


class Regression(Task):
    type = TaskType.regression
    metric, mode = "mse", "min"

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        return F.mse_loss(out, batch["y"])

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        se = F.mse_loss(out, batch["y"], reduction="sum")
        meter.add(batch["y"].numel(), mse=se, loss=se)


class RegressionEach(Task):
    """Per-step regression (TIMIT next-frame prediction): MSE over the unmasked elements (mean over frames x
    features), as the MomentumRNN code computes it."""

    type = TaskType.regression_each
    sequence_output = True
    metric, mode = "mse", "min"

    @staticmethod
    def _squared_errors(out: Tensor, batch: dict) -> Tensor:
        se = (out - batch["y"]).pow(2)
        mask = batch.get("mask")
        return se[mask] if mask is not None else se.reshape(-1, se.shape[-1])

    def loss(self, out: Tensor, batch: dict) -> Tensor:
        return self._squared_errors(out, batch).mean()

    def update(self, meter: Meter, out: Tensor, batch: dict) -> None:
        se = self._squared_errors(out, batch)
        meter.add(se.numel(), mse=se.sum(), loss=se.sum())


TASKS = {
    TaskType.classify_last: ClassifyLast,
    TaskType.classify_each: ClassifyEach,
    TaskType.multilabel_each: MultilabelEach,
    TaskType.tag: Tag,
    TaskType.regression: Regression,
    TaskType.regression_each: RegressionEach,
}


def build_task(task_type: TaskType | str, **kwargs) -> Task:
    return TASKS[TaskType(task_type)](**kwargs)
