"""A sequence model: optional input encoder, a (possibly stacked) recurrent cell, and a linear head shaped by the task.

The training recipes of the papers live here, each off by default (``model.dropout.*``, ``model.tie_weights``,
``model.embedding_init`` / ``model.head_init``, ``model.num_layers``):

- ``dropout.embedding``: word-level dropout, whole rows of the embedding matrix zeroed (awd-lstm-lm ``dropoute``);
- ``dropout.input``: on the encoder output (pytorch/examples, awd ``dropouti``);
- ``dropout.between``: between stacked layers (the torch module's ``dropout``, awd ``dropouth``);
- ``dropout.output``: on the last layer's output, before the head (awd ``dropout``);
- ``dropout.locked``: input / between / output draw one mask per sequence (per forward call, shared across its time
  steps; awd-lstm-lm's LockedDropout), instead of a fresh mask at every step;
- ``dropout.weight``: DropConnect on the recurrent matrices (awd ``wdrop``), a fresh mask per forward call. The
  parameters stay registered and trainable: the masked copies are passed in with ``torch.func.functional_call``.

Every dropout is inactive in ``model.eval()``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import Enum

import hydra.utils
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from torch import Tensor, nn
from torch.func import functional_call

from rnnrepro.cells.base import RecurrentCell, State
from rnnrepro.data.base import DataSpec
from rnnrepro.schema import positive, require
from rnnrepro.tasks import Task

# Keys of the model config consumed here, not by the cell's constructor.
SEQUENCE_MODEL_KEYS = ("num_layers", "dropout", "tie_weights", "embedding_init", "head_init", "init_range",
                       "ar_alpha", "tar_beta", "truncation", "lstm_recurrent")


# ------------------------------------------------------------------------------------------------- config schema
class LayerInit(str, Enum):
    default = "default"  # torch's own init of nn.Embedding / nn.Linear
    uniform = "uniform"  # weight and bias U(-init_range, init_range) (TF PTB tutorial: every variable)
    uniform_weight = "uniform_weight"  # weight U(-init_range, init_range), bias 0 (pytorch/examples decoder)


@dataclass
class DropoutConfig:
    """The dropout family (all off by default, all inactive in eval; rnnrepro/models.py)."""

    input: float = 0.0  # on the encoder output (pytorch/examples dropout on the embedding; awd dropouti)
    between: float = 0.0  # between stacked layers (torch's module dropout; awd dropouth)
    output: float = 0.0  # on the last layer's output, before the head (awd dropout)
    embedding: float = 0.0  # word-level: whole embedding rows zeroed (awd dropoute)
    weight: float = 0.0  # DropConnect on the recurrent matrices (awd wdrop)
    locked: bool = False  # input/between/output: one mask per sequence, shared across time steps (awd)

    def __post_init__(self) -> None:
        for key in ("input", "between", "output", "embedding", "weight"):
            value = getattr(self, key)
            require(0 <= value < 1, f"model.dropout.{key}", f"must be in [0, 1), got {value}")


@dataclass
class ModelConfig:
    """Keys every model has: the cell's size and the sequence-model recipe around it (rnnrepro/models.py)."""

    _target_: str = MISSING
    name: str = MISSING
    hidden_size: int = 128
    num_layers: int = 1  # stacked layers; torch's fused multi-layer module where the cell has one
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    tie_weights: bool = False  # head weight = embedding weight (needs data.embedding_size == hidden_size)
    embedding_init: LayerInit = LayerInit.default
    head_init: LayerInit = LayerInit.default
    init_range: float = 0.1  # the bound of every "uniform" init (embedding, head, and the classic cells' init)
    # AWD regularisers (Merity et al. 2018), per-step tasks only: AR adds ar_alpha * mean(o_t^2) over the last layer's
    # dropped outputs, TAR adds tar_beta * mean((h_t - h_{t-1})^2) over its undropped outputs within the window
    ar_alpha: float = 0.0
    tar_beta: float = 0.0
    # The k-truncated feed-forward approximation of Stable Recurrent Models (spec S5), not TBPTT: every output is
    # computed from the zero state over the last k inputs only (the first k outputs see their whole prefix). null:
    # the recurrent model. Training with it is the paper's "truncated model trained by gradient descent"
    truncation: int | None = None

    def __post_init__(self) -> None:
        require(self.truncation is None or self.truncation >= 1, "model.truncation",
                f"must be null or >= 1, got {self.truncation}")
        require(self.hidden_size >= 1, "model.hidden_size", f"must be >= 1, got {self.hidden_size}")
        require(self.num_layers >= 1, "model.num_layers", f"must be >= 1, got {self.num_layers}")
        positive(self.init_range, "model.init_range")
        require(self.ar_alpha >= 0 and self.tar_beta >= 0, "model.ar_alpha/tar_beta", "must be >= 0")
        require(self.num_layers > 1 or self.dropout.between == 0, "model.dropout.between",
                 "acts between layers, but model.num_layers=1; set model.num_layers>=2 or model.dropout.between=0")


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """x (T, B, k): one Bernoulli mask per (B, k), shared by all T steps, scaled by 1 / (1 - p)."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.shape[1], x.shape[2]).bernoulli_(1 - p).div_(1 - p)
    return x * mask


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """Drops whole rows (words) of the embedding matrix, scaled by 1 / (1 - p) (awd-lstm-lm ``embedded_dropout``)."""
    if not training or p == 0:
        return weight
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p).div_(1 - p)
    return weight * mask


class StackedCell(RecurrentCell):
    """``num_layers`` cells of any kind run layer after layer (each through its own forward: fused or the shared
    runner), with dropout between layers (``locked`` masks or a fresh one per step). The state is every layer's
    components, layer 0 first; the output is the last layer's."""

    def __init__(self, layers: list[RecurrentCell], dropout_between: float = 0.0, locked: bool = False) -> None:
        super().__init__(layers[0].input_size, layers[-1].hidden_size)
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(layers)
        self.dropout_between, self.locked = float(dropout_between), bool(locked)
        self.state_names = tuple(name for layer in layers for name in layer.state_names)
        self._sizes = [len(layer.state_names) for layer in layers]

    def init_state(self, batch_size: int, like: Tensor) -> State:
        return tuple(s for layer in self.layers for s in layer.init_state(batch_size, like))

    def _split(self, state: State) -> list[State]:
        parts, start = [], 0
        for size in self._sizes:
            parts.append(tuple(state[start : start + size]))
            start += size
        return parts

    def output(self, state: State) -> Tensor:
        return self.layers[-1].output(self._split(state)[-1])

    def redundant_parameters(self) -> int:
        return sum(layer.redundant_parameters() for layer in self.layers)

    def recurrent_weight_names(self) -> list[str]:
        return [f"layers.{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.recurrent_weight_names()]

    def forward(self, x: Tensor, state: State | None = None, return_sequence: bool = False) -> tuple[Tensor, State]:
        states = self._split(state) if state is not None else [None] * self.num_layers
        final: list[Tensor] = []
        seq = x
        for i, (layer, s) in enumerate(zip(self.layers, states)):
            if i > 0 and self.dropout_between > 0:
                seq = (locked_dropout(seq, self.dropout_between, self.training) if self.locked
                       else F.dropout(seq, self.dropout_between, self.training))
            last = i == self.num_layers - 1
            seq, s = layer(seq, s, return_sequence=return_sequence or not last)
            final.extend(s)
        return seq, tuple(final)


class SequenceModel(nn.Module):
    def __init__(self, cell: RecurrentCell, head: nn.Module, task: Task, encoder: nn.Module | None = None,
                 dropout: dict | None = None, ar_alpha: float = 0.0, tar_beta: float = 0.0,
                 truncation: int | None = None) -> None:
        super().__init__()
        self.truncation = None if truncation is None else int(truncation)
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.cell, self.head, self.task = cell, head, task
        d = dropout or {}
        self.p_input, self.p_output = float(d.get("input", 0.0)), float(d.get("output", 0.0))
        self.p_embedding, self.p_weight = float(d.get("embedding", 0.0)), float(d.get("weight", 0.0))
        self.locked = bool(d.get("locked", False))
        self.ar_alpha, self.tar_beta = float(ar_alpha), float(tar_beta)
        if (self.ar_alpha or self.tar_beta) and not task.sequence_output:
            raise ValueError("model.ar_alpha / model.tar_beta act on every step's output; this task reads only the "
                             "last state. Set both to 0")
        self.penalty: Tensor | None = None  # AR + TAR of the last training forward, taken by the algorithm
        self.dropped_weights = cell.recurrent_weight_names() if self.p_weight > 0 else []
        if self.p_weight > 0 and not self.dropped_weights:
            raise ValueError(f"model.dropout.weight: {type(cell).__name__} declares no recurrent weights to drop "
                             "(recurrent_weight_names); set model.dropout.weight=0")

    def _dropout(self, x: Tensor, p: float) -> Tensor:
        if p == 0:
            return x
        return locked_dropout(x, p, self.training) if self.locked else F.dropout(x, p, self.training)

    def _encode(self, x: Tensor) -> Tensor:
        if self.p_embedding > 0 and self.training and isinstance(self.encoder, nn.Embedding):
            x = F.embedding(x, embedding_dropout(self.encoder.weight, self.p_embedding, True))
        else:
            x = self.encoder(x)
        return self._dropout(x.transpose(0, 1), self.p_input)  # the cells run time-major

    def _run_cell(self, x: Tensor, state: State | None, return_sequence: bool) -> tuple[Tensor, State]:
        if self.truncation is not None:
            return self._run_truncated(x, return_sequence)
        return self._run_recurrent(x, state, return_sequence)

    def _run_truncated(self, x: Tensor, return_sequence: bool) -> tuple[Tensor, State]:
        """The k-truncated model: output t from the zero state over x[t-k+1 .. t]. All windows run as one batch of
        (T - k) * B sequences of length k; the first k outputs come from one run over the prefix. The returned state
        is the prefix run's (a truncated model carries none: the next call starts from zero again)."""
        k, steps, batch = self.truncation, x.shape[0], x.shape[1]
        if not return_sequence:
            return self._run_recurrent(x[-k:], None, False)
        out, state = self._run_recurrent(x[:k], None, True)
        if steps <= k:
            return out, state
        # windows[j] = x[j+1 .. j+k], ending at step t = j + k, for t = k .. T-1
        windows = x[1:].unfold(0, k, 1)  # (T - k, B, m, k)
        windows = windows.permute(3, 0, 1, 2).reshape(k, (steps - k) * batch, x.shape[2])
        last, _ = self._run_recurrent(windows, None, False)
        return torch.cat([out, last.reshape(steps - k, batch, -1)], 0), state

    def _run_recurrent(self, x: Tensor, state: State | None, return_sequence: bool) -> tuple[Tensor, State]:
        if self.dropped_weights and self.training:
            masked = {name: F.dropout(self.cell.get_parameter(name), self.p_weight, True)
                      for name in self.dropped_weights}
            return functional_call(self.cell, masked, (x, state), {"return_sequence": return_sequence},
                                   strict=False)
        return self.cell(x, state, return_sequence=return_sequence)

    def features(self, x: Tensor, state: State | None = None, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """The last layer's outputs (T, B, n) (or (B, n) for sequence-level tasks) after output dropout, and the
        state. ``reset`` (B, T) bool zeroes a row's state before the steps where it is True: the sequence is cut
        into segments at those steps, and each segment runs through the cell's own (fused) forward."""
        x = self._encode(x)
        seq = self.task.sequence_output
        if reset is None:
            out, state = self._run_cell(x, state, seq)
        else:
            reset = reset.t()  # (T, B)
            starts = (torch.nonzero(reset[1:].any(1)).flatten() + 1).tolist()  # one host sync per batch
            cuts = [0, *starts, reset.shape[0]]
            outs = []
            for start, stop in zip(cuts[:-1], cuts[1:]):
                if state is not None:
                    keep = (~reset[start]).unsqueeze(1)
                    state = tuple(s * keep.to(s.dtype) for s in state)
                out, state = self._run_cell(x[start:stop], state, seq)
                outs.append(out)
            out = torch.cat(outs, 0) if seq else outs[-1]
        if seq:
            raw, out = out, self._dropout(out, self.p_output)
            if self.training and (self.ar_alpha or self.tar_beta):
                penalty = self.ar_alpha * out.pow(2).mean()
                if raw.shape[0] > 1:
                    penalty = penalty + self.tar_beta * (raw[1:] - raw[:-1]).pow(2).mean()
                self.penalty = penalty
        elif self.p_output > 0:
            out = F.dropout(out, self.p_output, self.training)
        return out, state

    def forward(self, x: Tensor, state: State | None = None, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, T, m) features or (B, T) token ids. Returns head outputs ((B, C) or (B, T, C)) and the state."""
        out, state = self.features(x, state, reset)
        out = self.head(out)
        return (out.transpose(0, 1) if self.task.sequence_output else out), state

    def take_penalty(self) -> Tensor | float:
        """The AR/TAR penalty of the last training forward (0 without regularisers); cleared once taken."""
        penalty, self.penalty = self.penalty, None
        return 0.0 if penalty is None else penalty

    def after_optimizer_step(self) -> None:
        """Hook for constrained weights (e.g. projections of stable models), called after every optimizer step."""
        for module in self.modules():
            if module is not self and hasattr(module, "after_optimizer_step"):
                module.after_optimizer_step()


class OneHot(nn.Module):
    """Parameter-free token encoder: ids (B, T) -> one-hot vectors (B, T, num_classes) in the model's float dtype
    (``data.input_encoding=one_hot``; the OK paper feeds one-hot characters straight into the cell's W)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        # follows .to(device/dtype) of the model; not saved in state_dict
        self.register_buffer("_like", torch.empty(0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(x, self.num_classes).to(self._like.dtype)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


def build_encoder(spec: DataSpec) -> nn.Module | None:
    """None for feature inputs; for token inputs an embedding (``spec.input_encoding == "embedding"``) or a one-hot
    encoder (``"one_hot"``, input size = vocabulary)."""
    if spec.vocab_size is None:
        return None
    if spec.input_encoding == "one_hot":
        if spec.input_size != spec.vocab_size:
            raise ValueError(f"one_hot inputs need input_size == vocab_size, got {spec.input_size} != "
                             f"{spec.vocab_size}")
        return OneHot(spec.vocab_size)
    if spec.input_encoding != "embedding":
        raise ValueError(f"input_encoding must be embedding or one_hot, got {spec.input_encoding!r}")
    return nn.Embedding(spec.vocab_size, spec.input_size)


def _cell_kwargs(model_cfg: DictConfig | dict) -> tuple[type, dict]:
    kwargs = (OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
              if isinstance(model_cfg, DictConfig) else dict(model_cfg))
    target = kwargs.pop("_target_")
    kwargs.pop("name")
    for key in SEQUENCE_MODEL_KEYS:
        kwargs.pop(key, None)
    cls = hydra.utils.get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, RecurrentCell)):
        raise TypeError(f"model._target_={target} is not a rnnrepro.cells.base.RecurrentCell")
    return cls, kwargs


def _accepts(cls: type, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


def build_cell(model_cfg: DictConfig, input_size: int) -> RecurrentCell:
    """The cell of ``model_cfg``: ``num_layers`` layers, natively (the torch modules, one fused multi-layer call) when
    the cell class supports it and the between-layer dropout is not locked, otherwise a :class:`StackedCell`."""
    cls, kwargs = _cell_kwargs(model_cfg)
    layers = int(model_cfg.get("num_layers", 1))
    dropout = model_cfg.get("dropout") or {}
    between, locked = float(dropout.get("between", 0.0)), bool(dropout.get("locked", False))
    if _accepts(cls, "init_range") and "init_range" in model_cfg:
        kwargs["init_range"] = float(model_cfg.init_range)
    if layers == 1:
        return cls(input_size=input_size, **kwargs)
    if getattr(cls, "native_layers", False) and not (locked and between > 0):
        return cls(input_size=input_size, num_layers=layers, dropout_between=between, **kwargs)
    hidden = int(kwargs["hidden_size"])
    return StackedCell([cls(input_size=input_size if i == 0 else hidden, **kwargs) for i in range(layers)],
                       dropout_between=between, locked=locked)


def _init_uniform(module: nn.Module, init: str, bound: float) -> None:
    init = str(getattr(init, "value", init))
    if init == "default":
        return
    with torch.no_grad():
        module.weight.uniform_(-bound, bound)
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.uniform_(-bound, bound) if init == "uniform" else bias.zero_()


def build_model(model_cfg: DictConfig, spec: DataSpec, task: Task) -> SequenceModel:
    encoder = build_encoder(spec)  # token inputs: embedding or one-hot first
    cell = build_cell(model_cfg, spec.input_size)
    head = nn.Linear(cell.hidden_size, spec.output_size)
    top = cell.layers[-1] if isinstance(cell, StackedCell) else cell
    readout_std = getattr(top, "readout_init_std", None)
    if readout_std is not None:  # the cell's paper initialises the readout too (OK RHN: [W_out; b] ~ N(0, 0.01^2))
        nn.init.normal_(head.weight, 0.0, readout_std)
        nn.init.normal_(head.bias, 0.0, readout_std)
    bound = float(model_cfg.get("init_range", 0.1))
    dropout_cfg = model_cfg.get("dropout") or {}
    embedding_init = model_cfg.get("embedding_init", "default")
    for key, active in (("model.dropout.embedding", float(dropout_cfg.get("embedding", 0.0)) > 0),
                        ("model.embedding_init", str(getattr(embedding_init, "value", embedding_init)) != "default")):
        if active and not isinstance(encoder, nn.Embedding):
            raise ValueError(f"{key} acts on a token embedding; this dataset's inputs have none (features, or "
                             "data.input_encoding=one_hot). Leave it at its default")
    if isinstance(encoder, nn.Embedding):
        _init_uniform(encoder, model_cfg.get("embedding_init", "default"), bound)
    _init_uniform(head, model_cfg.get("head_init", "default"), bound)
    if bool(model_cfg.get("tie_weights", False)):
        if not isinstance(encoder, nn.Embedding) or encoder.weight.shape != head.weight.shape:
            emb = tuple(encoder.weight.shape) if isinstance(encoder, nn.Embedding) else None
            raise ValueError(f"model.tie_weights=true needs an embedding of the head's shape (vocab, hidden) = "
                             f"{tuple(head.weight.shape)}; the embedding is {emb}. Set data.embedding_size="
                             f"{head.weight.shape[1]} (= model.hidden_size), or model.tie_weights=false")
        head.weight = encoder.weight  # one Parameter, shared storage
    dropout = OmegaConf.to_container(model_cfg.dropout) if isinstance(model_cfg.get("dropout"), DictConfig) \
        else dict(model_cfg.get("dropout") or {})
    truncation = model_cfg.get("truncation")
    if not bool(model_cfg.get("lstm_recurrent", True)):  # the JSB code's LSTM bug: every frame from the zero state
        if truncation not in (None, 1):
            raise ValueError(f"model.lstm_recurrent=false is the 1-truncated model; model.truncation={truncation} "
                             "contradicts it. Set one of them")
        truncation = 1
    return SequenceModel(cell, head, task, encoder, dropout=dropout, ar_alpha=float(model_cfg.get("ar_alpha", 0.0)),
                         tar_beta=float(model_cfg.get("tar_beta", 0.0)), truncation=truncation)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(numel of trainable parameters, free parameters): free discounts stored entries that are not independent,
    e.g. the n(n+1)/2 redundant entries of a full W used only as W - W^T, or the second LSTM bias vector. Tied
    parameters count once."""
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    redundant = sum(m.redundant_parameters() for m in model.modules()
                    if isinstance(m, RecurrentCell) and not isinstance(m, StackedCell))
    return numel, numel - redundant
