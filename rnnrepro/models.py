"""A sequence model: optional input encoder, a recurrent cell, and a linear head shaped by the task type."""

from __future__ import annotations

import hydra.utils
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

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """x: (B, T, m) features or (B, T) token ids. Returns head outputs ((B, C) or (B, T, C)) and the state."""
        x = self.encoder(x).transpose(0, 1)  # the cells run time-major
        out, state = self.cell(x, state, return_sequence=self.task.sequence_output)
        out = self.head(out)
        return (out.transpose(0, 1) if self.task.sequence_output else out), state

    def after_optimizer_step(self) -> None:
        """Hook for constrained weights (e.g. projections of stable models), called after every optimizer step."""
        for module in self.modules():
            if module is not self and hasattr(module, "after_optimizer_step"):
                module.after_optimizer_step()


def build_cell(model_cfg: DictConfig, input_size: int) -> RecurrentCell:
    kwargs = OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    target = kwargs.pop("_target_")
    kwargs.pop("name")
    cell = hydra.utils.get_class(target)(input_size=input_size, **kwargs)
    if not isinstance(cell, RecurrentCell):
        raise TypeError(f"model._target_={target} is not a rnnrepro.cells.base.RecurrentCell")
    return cell


def build_model(model_cfg: DictConfig, spec: DataSpec, task: Task) -> SequenceModel:
    encoder = None
    input_size = spec.input_size
    if spec.vocab_size is not None:  # token inputs: embed first
        encoder = nn.Embedding(spec.vocab_size, spec.input_size)
    cell = build_cell(model_cfg, input_size)
    return SequenceModel(cell, nn.Linear(cell.hidden_size, spec.output_size), task, encoder)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(numel of trainable parameters, free parameters): free discounts stored entries that are not independent,
    e.g. the n(n+1)/2 redundant entries of a full W used only as W - W^T, or the second LSTM bias vector."""
    numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    redundant = sum(m.redundant_parameters() for m in model.modules() if isinstance(m, RecurrentCell))
    return numel, numel - redundant
