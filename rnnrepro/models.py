"""A sequence model: optional input encoder, a recurrent cell, and a linear head shaped by the task type."""

from __future__ import annotations

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from rnnrepro.cells.base import RecurrentCell, State
from rnnrepro.data.base import DataSpec
from rnnrepro.tasks import Task


class SequenceModel(nn.Module):
    def __init__(self, cell: RecurrentCell, head: nn.Module, task: Task, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.cell, self.head, self.task = cell, head, task

    def forward(self, x: Tensor, state: State | None = None, reset: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (B, T, m) features or (B, T) token ids. Returns head outputs ((B, C) or (B, T, C)) and the state.

        ``reset`` (B, T) bool zeroes a row's state before the steps where it is True (streams that start a new
        sequence mid-batch); such batches run through the cell's step path."""
        x = self.encoder(x).transpose(0, 1)  # the cells run time-major
        if reset is not None and bool(reset[:, 1:].any()):
            out, state = self._forward_with_resets(x, state, reset.t())
        else:
            if reset is not None and state is not None:
                state = tuple(s.masked_fill(reset[:, :1], 0) for s in state)
            out, state = self.cell(x, state, return_sequence=self.task.sequence_output)
        out = self.head(out)
        return (out.transpose(0, 1) if self.task.sequence_output else out), state

    def _forward_with_resets(self, x: Tensor, state: State | None, reset: Tensor) -> tuple[Tensor, State]:
        cell = self.cell
        state = cell.init_state(x.shape[1], x) if state is None else state
        gx, ctx, outputs = cell.project_inputs(x), cell.prepare(), []
        for gx_t, reset_t in zip(gx.unbind(0), reset.unbind(0)):
            keep = (~reset_t).unsqueeze(1).to(gx_t.dtype)
            state = cell.step(gx_t, tuple(s * keep for s in state), ctx)
            outputs.append(cell.output(state))
        return (torch.stack(outputs, 0) if self.task.sequence_output else outputs[-1]), state

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


def build_cell(model_cfg: DictConfig, input_size: int) -> RecurrentCell:
    kwargs = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    target = kwargs.pop("_target_")
    kwargs.pop("name")
    cell = hydra.utils.get_class(target)(input_size=input_size, **kwargs)
    if not isinstance(cell, RecurrentCell):
        raise TypeError(f"model._target_={target} is not a rnnrepro.cells.base.RecurrentCell")
    return cell


def build_model(model_cfg: DictConfig, spec: DataSpec, task: Task) -> SequenceModel:
    encoder = build_encoder(spec)  # token inputs: embedding or one-hot first
    cell = build_cell(model_cfg, spec.input_size)
    head = nn.Linear(cell.hidden_size, spec.output_size)
    readout_std = getattr(cell, "readout_init_std", None)
    if readout_std is not None:  # the cell's paper initialises the readout too (OK RHN: [W_out; b] ~ N(0, 0.01^2))
        nn.init.normal_(head.weight, 0.0, readout_std)
        nn.init.normal_(head.bias, 0.0, readout_std)
    return SequenceModel(cell, head, task, encoder)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(numel of trainable parameters, free parameters): free discounts stored entries that are not independent,
    e.g. the n(n+1)/2 redundant entries of a full W used only as W - W^T, or the second LSTM bias vector."""
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    redundant = sum(m.redundant_parameters() for m in model.modules() if isinstance(m, RecurrentCell))
    return numel, numel - redundant
