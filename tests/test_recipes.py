"""The training recipes: stacked layers, the dropout family, weight drop, tying, schedules, NT-ASGD, AWD regularisers,
variable BPTT, the best-test compatibility number, progress lines, and component registration."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from rnnrepro.api import run
from rnnrepro.cells.base import RecurrentCell, State
from rnnrepro.cells.classic import LSTM, LSTMConfig
from rnnrepro.config import ConfigError, validate
from rnnrepro.data.base import DataSpec
from rnnrepro.data.lm import variable_lengths, variable_windows
from rnnrepro.models import DropoutConfig, ModelConfig, StackedCell, build_model, locked_dropout
from rnnrepro.schema import SCHEMAS, register_schema
from rnnrepro.tasks import TaskType, build_task
from rnnrepro.training.optim import NTASGD, Schedule

DT = torch.float64
LM_SPEC = DataSpec(input_size=6, output_size=11, task=TaskType.classify_each, vocab_size=11, metric="ppl")


def lm_model(**model) -> nn.Module:
    dropout = DropoutConfig(**model.pop("dropout", {}))
    cfg = OmegaConf.structured(LSTMConfig(**{"hidden_size": 6, **model}, dropout=dropout))
    return build_model(cfg, LM_SPEC, build_task(TaskType.classify_each, metric="ppl"))


# --- layers ------------------------------------------------------------------------------------------------------
def test_two_layer_fused_lstm_equals_the_cell_path_on_the_same_parameters():
    torch.manual_seed(0)
    fused = LSTM(3, 5, num_layers=2, forget_bias=0.5).to(DT)
    cell = LSTM(3, 5, num_layers=2, impl="cell").to(DT)
    cell.load_state_dict(fused.state_dict())
    x = torch.randn(9, 4, 3, dtype=DT, requires_grad=True)
    state = tuple(torch.randn(4, 5, dtype=DT) for _ in range(4))
    out_f, st_f = fused(x, state, return_sequence=True)
    out_c, st_c = cell(x, state, return_sequence=True)
    assert fused.rnn.num_layers == 2 and len(st_f) == 4  # one fused module, (h, c) per layer
    torch.testing.assert_close(out_c, out_f, atol=1e-10, rtol=0)
    for a, b in zip(st_c, st_f):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    (g_f,) = torch.autograd.grad(out_f.sum() + st_f[3].sum(), x)
    (g_c,) = torch.autograd.grad(out_c.sum() + st_c[3].sum(), x)
    torch.testing.assert_close(g_c, g_f, atol=1e-10, rtol=0)


def test_custom_cells_stack_through_the_runner():
    from rnnrepro.cells.antisymmetric import AntisymConfig

    torch.manual_seed(0)
    cfg = OmegaConf.structured(AntisymConfig(hidden_size=5, num_layers=2, eps=0.3))
    spec = DataSpec(input_size=3, output_size=4, task=TaskType.classify_each)
    model = build_model(cfg, spec, build_task(TaskType.classify_each)).to(DT).eval()
    assert isinstance(model.cell, StackedCell) and [layer.input_size for layer in model.cell.layers] == [3, 5]
    x = torch.randn(2, 7, 3, dtype=DT)
    out, state = model(x)
    first, s0 = model.cell.layers[0](x.transpose(0, 1), return_sequence=True)
    second, s1 = model.cell.layers[1](first, return_sequence=True)
    torch.testing.assert_close(out, model.head(second).transpose(0, 1), atol=1e-12, rtol=0)
    assert len(state) == 2 and torch.equal(state[0], s0[0]) and torch.equal(state[1], s1[0])


def test_locked_between_layer_dropout_stacks_separate_lstm_modules():
    model_cfg = OmegaConf.structured(LSTMConfig(hidden_size=6, num_layers=3))
    model_cfg.dropout.between, model_cfg.dropout.locked = 0.3, True
    model = build_model(model_cfg, LM_SPEC, build_task(TaskType.classify_each, metric="ppl"))
    assert isinstance(model.cell, StackedCell) and len(model.cell.layers) == 3
    assert all(layer.num_layers == 1 for layer in model.cell.layers)
    out, state = model(torch.randint(0, 11, (2, 7)))
    assert out.shape == (2, 7, 11) and len(state) == 6


# --- dropout -----------------------------------------------------------------------------------------------------
def test_locked_dropout_shares_one_mask_over_time_and_draws_a_new_one_per_sequence():
    torch.manual_seed(0)
    x = torch.ones(50, 3, 40)
    y = locked_dropout(x, 0.5, training=True)
    kept = y != 0
    assert torch.equal(kept, kept[:1].expand_as(kept))  # same mask at every step
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # scaled by 1 / (1 - p)
    y2 = locked_dropout(x, 0.5, training=True)
    assert not torch.equal(y2 != 0, kept)  # a fresh mask for the next sequence
    assert torch.equal(locked_dropout(x, 0.5, training=False), x)


def test_weight_drop_masks_the_recurrent_matrix_in_training_only_and_keeps_it_trainable():
    torch.manual_seed(0)
    model = lm_model(num_layers=2, dropout={"weight": 0.5})
    names = model.cell.recurrent_weight_names()
    assert names == ["rnn.weight_hh_l0", "rnn.weight_hh_l1"]
    weights = {n: model.cell.get_parameter(n) for n in names}
    before = {n: w.detach().clone() for n, w in weights.items()}
    seen = []

    def spy(module, args, output):  # the weights nn.LSTM actually ran with
        seen.append(module.weight_hh_l0.detach().clone())

    handle = model.cell.rnn.register_forward_hook(spy)
    x = torch.randint(0, 11, (2, 5))
    out, _ = model(x)
    out.sum().backward()
    handle.remove()
    dropped = seen[-1]
    assert (dropped == 0).float().mean() > 0.3  # DropConnect: entries zeroed ...
    nonzero = dropped != 0
    torch.testing.assert_close(dropped[nonzero], 2 * before["rnn.weight_hh_l0"][nonzero])  # ... the rest scaled
    for n, w in weights.items():
        assert isinstance(w, nn.Parameter) and w.requires_grad and w.grad is not None and w.grad.abs().sum() > 0
        assert torch.equal(w.detach(), before[n])  # the stored parameter itself is untouched
        assert n.split(".")[-1] in dict(model.cell.rnn.named_parameters())  # still registered
    model.eval()
    seen.clear()
    handle = model.cell.rnn.register_forward_hook(spy)
    model(x)
    handle.remove()
    assert torch.equal(seen[-1], before["rnn.weight_hh_l0"])  # evaluation runs the full matrix


def test_every_dropout_is_off_in_eval():
    torch.manual_seed(0)
    plain = lm_model(num_layers=2)
    dropped = lm_model(num_layers=2, dropout={"input": 0.4, "between": 0.3, "output": 0.5, "embedding": 0.2,
                                              "weight": 0.5})
    dropped.load_state_dict(plain.state_dict())
    x = torch.randint(0, 11, (3, 8))
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(x)[0], plain(x)[0])
    dropped.train()
    torch.manual_seed(1)
    a = dropped(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, dropped(x)[0])  # active in training


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    model = lm_model(dropout={"embedding": 0.5})
    seen = []
    model.cell.rnn.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    x = torch.arange(11).repeat(3).unsqueeze(0)  # every word type three times
    model(x)
    rows, weight = seen[-1][:, 0], model.encoder.weight.detach()  # (T, emb): the embedded word at each step
    dropped = {int(w) for w, row in zip(x[0], rows) if torch.count_nonzero(row) == 0}
    assert 0 < len(dropped) < 11
    for w, row in zip(x[0].tolist(), rows):
        # one decision per word type for the whole sequence: zero, or the embedding scaled by 1 / (1 - p)
        torch.testing.assert_close(row, torch.zeros_like(row) if w in dropped else 2 * weight[w])


def test_tied_weights_share_storage_and_sizes_are_checked(compose_cfg):
    model = lm_model(tie_weights=True)
    assert model.head.weight is model.encoder.weight
    assert model.head.weight.data_ptr() == model.encoder.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n != "head.weight")
    cfg = compose_cfg("model=lstm", "dataset=ptb_word", "data.verify_checksums=false", "model.tie_weights=true",
                      "data.embedding_size=6")
    with pytest.raises(ConfigError, match="data.embedding_size=8"):
        validate(cfg)


def test_uniform_inits_of_embedding_head_and_cell():
    torch.manual_seed(0)
    model = lm_model(embedding_init="uniform", head_init="uniform_weight", init="uniform", init_range=0.05,
                     forget_bias=0.0)
    assert model.encoder.weight.abs().max() <= 0.05 and model.head.weight.abs().max() <= 0.05
    assert torch.count_nonzero(model.head.bias) == 0
    for name, p in model.cell.rnn.named_parameters():
        assert (p.abs().max() <= 0.05) if name.startswith("weight") else torch.count_nonzero(p) == 0


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=lstm", "model.dropout.between=0.5"], "model.num_layers>=2"),
    (["model=rnn", "model.num_layers=2", "algorithm=uoro"], "model.num_layers=1"),
    (["model=lstm", "model.dropout.output=1.0"], r"must be in \[0, 1\)"),
    (["model=rnn", "algorithm=rtrl", "model.dropout.output=0.1"], "would be ignored"),
    (["model=lstm", "model.dropout.embedding=0.1"], "acts on a token embedding"),
    (["model=lstm", "dataset=ptb_word", "data.variable_bptt.enabled=true", "data.drop_last_window=true"],
     "data.drop_last_window"),
])
def test_recipe_combinations_that_cannot_work_fail_at_compose_time(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides))


def test_sgd_means_plain_sgd(compose_cfg):
    assert compose_cfg("optimizer=sgd").optimizer.momentum == 0.0


# --- schedules ---------------------------------------------------------------------------------------------------
def _lrs(name: str, vals: list[float], mode: str = "min", **cfg) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched_cfg = OmegaConf.create({"name": name, "interval": "epoch", "target": "lr", "step_size": 1, "gamma": 0.5,
                                  "start_factor": 1.0, "end_factor": 0.0, "after": 4, "patience": 0, "window": 3,
                                  **cfg})
    schedule = Schedule(sched_cfg, opt, total_steps=100, total_epochs=len(vals))
    out = []
    for value in vals:  # one epoch: train at the current lr, validate, then the epoch boundary
        out.append(opt.param_groups[0]["lr"])
        schedule.observe(value, mode)
        schedule.step("epoch")
    return out


def test_plateau_divides_after_every_epoch_without_improvement():
    # pytorch/examples word LM: lr /= 4 whenever the validation loss does not improve
    vals = [5.0, 4.0, 4.5, 3.9, 3.95, 3.99, 3.0]
    assert _lrs("plateau", vals, gamma=0.25) == [1.0, 1.0, 1.0, 0.25, 0.25, 0.0625, 0.015625]
    assert _lrs("plateau", vals, gamma=0.25, patience=1) == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.25]
    assert _lrs("plateau", [0.5, 0.6, 0.55], mode="max", gamma=0.5) == [1.0, 1.0, 1.0]
    assert _lrs("plateau", [0.5, 0.4, 0.45], mode="max", gamma=0.5) == [1.0, 1.0, 0.5]


def test_jsb_rule_divides_by_ten_after_epoch_ten_when_val_exceeds_the_previous_three():
    vals = [9.0, 8, 7, 6, 5, 4, 3, 2, 1.5, 1.0, 1.1, 1.2, 0.9, 1.3, 1.25]
    lrs = _lrs("jsb", vals, gamma=0.1, after=10, window=3)
    # epoch 11 (1.1) exceeds max(1.5, 1.0)? no: max of previous 3 = max(2, 1.5, 1.0) = 2 -> no cut
    # epoch 12 (1.2) vs max(1.5, 1.0, 1.1) = 1.5 -> no; epoch 14 (1.3) vs max(1.1, 1.2, 0.9) = 1.2 -> cut
    assert lrs[:14] == [1.0] * 14 and lrs[14] == pytest.approx(0.1)
    # an epoch <= 10 never cuts, however bad
    assert _lrs("jsb", [1.0, 2.0, 3.0, 4.0], gamma=0.1, after=10) == [1.0] * 4


def test_cosine_and_decay_after_sequences():
    cos = _lrs("cosine", [0.0] * 5, end_factor=0.1)
    assert cos == pytest.approx([0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)])
    # TF PTB small: lr_decay ** max(i + 1 - max_epoch, 0), max_epoch 4
    assert _lrs("decay_after", [0.0] * 7, after=4, gamma=0.5) == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_ntasgd_switches_when_val_is_worse_than_the_best_of_all_but_the_last_nonmono():
    w = nn.Parameter(torch.zeros(2))
    opt = NTASGD([w], lr=0.5, nonmono=2)
    iterates = []
    vals = [5.0, 4.0, 3.0, 3.5, 2.0, 3.2]
    for k, value in enumerate(vals):
        w.grad = torch.tensor([1.0, -2.0])
        opt.step()
        iterates.append(w.detach().clone())
        opt.observe(value, "min")
        if k < 3:
            assert not opt.averaging
    # validation 4 (3.5) vs min([5]) and 5 (2.0) vs min([5, 4]): no; 6 (3.2) > min([5, 4, 3]) = 3 -> the switch
    assert opt.averaging and opt.switched_at_validation == 6
    with opt.averaged_weights():
        assert torch.equal(w, iterates[-1])  # no averaged step yet: nothing to swap in
    w.grad = torch.tensor([1.0, -2.0])
    opt.step()
    iterates.append(w.detach().clone())
    with opt.averaged_weights():
        torch.testing.assert_close(w.detach(), iterates[-1])  # mu_1 = 1: ax = the first averaged iterate
    w.data.add_(1.0)  # the average is a copy, not the parameter
    with opt.averaged_weights():
        torch.testing.assert_close(w.detach(), iterates[-1])
    w.data.sub_(1.0)
    for _ in range(2):
        w.grad = torch.tensor([1.0, -2.0])
        opt.step()
        iterates.append(w.detach().clone())
    with opt.averaged_weights():
        # torch.optim.ASGD (t0 = 0, lambd = 0) averages the iterates from the second averaged step on
        torch.testing.assert_close(w.detach(), torch.stack(iterates[-2:]).mean(0))
    assert torch.equal(w.detach(), iterates[-1])  # restored outside
    # the same averages as torch's ASGD run on the same gradients from the switch on
    v = nn.Parameter(iterates[5].clone())
    asgd = torch.optim.ASGD([v], lr=0.5, t0=0, lambd=0.0)
    for _ in range(3):
        v.grad = torch.tensor([1.0, -2.0])
        asgd.step()
    with opt.averaged_weights():
        torch.testing.assert_close(w.detach(), asgd.state[v]["ax"])
    state = opt.state_dict()
    fresh = NTASGD([nn.Parameter(w.detach().clone())], lr=0.5, nonmono=2)
    fresh.load_state_dict(state)
    assert fresh.averaging and fresh.history == opt.history and fresh.averaged_steps == 3


# --- AWD regularisers and variable BPTT ------------------------------------------------------------------------
def test_ar_and_tar_penalties_match_their_formulas():
    torch.manual_seed(0)
    model = lm_model(ar_alpha=2.0, tar_beta=1.0)
    x = torch.randint(0, 11, (3, 7))
    seen = []
    model.head.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    model(x)
    h = seen[-1]  # (T, B, n), no output dropout here
    expected = 2.0 * h.pow(2).mean() + 1.0 * (h[1:] - h[:-1]).pow(2).mean()
    torch.testing.assert_close(model.take_penalty().detach(), expected)
    assert model.take_penalty() == 0.0  # taken once
    model.eval()
    model(x)
    assert model.take_penalty() == 0.0  # training only


def test_variable_bptt_lengths_follow_the_awd_distribution_and_scale_the_lr():
    rng = np.random.default_rng(0)
    lengths = variable_lengths(200_001, 70, rng)
    drawn = np.array([d for _, d in lengths])
    assert sum(length for length, _ in lengths) >= 200_000 - 1 and drawn.min() >= 5
    half = drawn < 52  # bptt / 2 = 35 with std 5 vs 70: separated by > 3 std
    assert abs(half.mean() - 0.05) < 0.01
    assert abs(drawn[~half].mean() - 69.5) < 0.3 and abs(drawn[~half].std() - 5) < 0.3  # int() floors
    assert abs(drawn[half].mean() - 34.5) < 0.8
    source = torch.arange(400).view(40, 10)
    batches = list(variable_windows(source, [(8, 8), (31, 40)], bptt=20))
    assert [b["lr_scale"] for b in batches] == [0.4, 2.0]
    assert torch.equal(batches[1]["x"], source[8:39].t()) and torch.equal(batches[1]["y"], source[9:40].t())


def test_variable_bptt_run_scales_each_steps_lr(compose_cfg, monkeypatch, tmp_path):
    used = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    cfg = compose_cfg("model=lstm", "dataset=ptb_word", "data.verify_checksums=false", "data.bptt=6",
                      "data.batch_size=2", "data.variable_bptt.enabled=true", "data.variable_bptt.std=2",
                      "data.variable_bptt.min_len=2", "optimizer=sgd", "optimizer.lr=1.0", "trainer.max_steps=5",
                      "trainer.max_epochs=5",
                      "data.embedding_size=8")
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["data"]["variable_bptt"]
    from rnnrepro.data import build_datamodule

    data = build_datamodule(cfg.data, int(cfg.seed))
    data.setup()
    drawn = [d for epoch in range(5) for _, d in data.epoch_lengths(epoch)][:5]
    assert used == pytest.approx([d / 6 for d in drawn])  # each step: lr x drawn length / bptt
    assert len(set(used)) > 1
    last = pd.read_csv(tmp_path / "run" / "metrics.csv").lr.iloc[-1]
    assert last == 1.0  # restored after every step


# --- the compatibility number -------------------------------------------------------------------------------------
def test_best_test_over_evals_never_changes_selection(compose_cfg, tmp_path):
    runs = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        cfg = compose_cfg("trainer.max_steps=6", "trainer.eval_every_n_steps=2", f"trainer.report_best_test={flag}",
                          "trainer.max_epochs=5", output_dir=out)
        runs[flag] = (run(cfg), torch.load(out / "best.pt", weights_only=False))
    (off, best_off), (on, best_on) = runs["false"], runs["true"]
    assert off["best_test_over_evals"] is None and on["best_test_over_evals"] is not None
    for key in ("best_val", "best_step", "test_at_best_val", "test_last"):
        assert on[key] == off[key], key
    assert best_on["step"] == best_off["step"]
    for k in best_off["model"]:
        assert torch.equal(best_on["model"][k], best_off["model"][k])
    tests = [r for r in (tmp_path / "true" / "metrics.csv").read_text().splitlines() if ",test_each_eval," in r]
    assert len(tests) == 3  # one test evaluation per validation


# --- progress lines, registration --------------------------------------------------------------------------------
def test_progress_lines_appear_off_a_terminal(compose_cfg, caplog):
    cfg = compose_cfg("trainer.max_steps=4", "trainer.log_every_s=1e-9", "trainer.progress_bar=true")
    with caplog.at_level(logging.INFO, logger="rnnrepro"):
        run(cfg)
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert lines and all("ETA" in line and "epoch 1/1" in line for line in lines)


class ThrowawayCell(RecurrentCell):
    """h_t = tanh(x_t A + h_{t-1} B): defined inside the test module, registered from inside a test."""

    def __init__(self, input_size: int, hidden_size: int, scale: float = 1.0) -> None:
        super().__init__(input_size, hidden_size)
        self.a = nn.Linear(input_size, hidden_size)
        self.b = nn.Parameter(scale * torch.eye(hidden_size) * 0.5)

    def project_inputs(self, x):
        return self.a(x)

    def step(self, gx, state: State, ctx: Any) -> State:
        return (torch.tanh(gx + state[0] @ self.b),)


def test_a_new_cell_is_one_module_plus_one_yaml(compose_cfg, tmp_path):
    if "throwaway" not in SCHEMAS.get("model", {}):
        @register_schema("model", "throwaway")
        @dataclass
        class ThrowawayConfig(ModelConfig):
            _target_: str = f"{__name__}.ThrowawayCell"
            name: str = "throwaway"
            scale: float = 1.0

    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "throwaway.yaml").write_text("defaults:\n  - /schema/model/throwaway@_here_\n  - _self_\nscale: 0.7\n")
    from hydra.core.global_hydra import GlobalHydra

    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=throwaway", "trainer.max_steps=2")
    GlobalHydra.instance().clear()
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["model"] == "throwaway"
    with pytest.raises(Exception, match="scale"):  # the schema types its keys
        compose_cfg(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=throwaway", "model.scale=abc")


def test_weight_drop_refuses_a_cell_without_recurrent_weights():
    cfg = OmegaConf.create({"_target_": f"{__name__}.ThrowawayCell", "name": "t", "hidden_size": 4,
                            "dropout": {"weight": 0.5}})
    with pytest.raises(ValueError, match="recurrent_weight_names"):
        build_model(cfg, LM_SPEC, build_task(TaskType.classify_each, metric="ppl"))


LM_RUN = ["model=lstm", "dataset=ptb_word", "data.verify_checksums=false", "data.batch_size=2", "data.bptt=4",
          "data.embedding_size=8", "data.eval_batch_size=1", "trainer.limit_eval_batches=null",
          "trainer.max_steps=null"]


def test_ntasgd_best_checkpoint_holds_the_averaged_weights_that_were_evaluated(compose_cfg, tmp_path):
    cfg = compose_cfg(*LM_RUN, "optimizer=ntasgd", "optimizer.nonmono=1", "optimizer.lr=5.0",
                      "trainer.max_epochs=6", output_dir=tmp_path / "nt")
    summary = run(cfg)
    assert summary["optimizer_switch"] is not None  # the switch happened
    from rnnrepro.data import build_datamodule
    from rnnrepro.tasks.base import Meter

    data = build_datamodule(cfg.data, 0)
    data.setup()
    task = build_task(data.spec.task, metric="ppl")
    model = build_model(cfg.model, data.spec, task)
    model.load_state_dict(torch.load(tmp_path / "nt" / "best.pt", weights_only=False)["model"])
    model.eval()
    meter, state = Meter(), None
    with torch.no_grad():
        for batch in data.eval_batches("test"):
            out, state = model(batch["x"], state)
            task.update(meter, out, batch)
    assert task.compute(meter)["ppl"] == pytest.approx(summary["test_at_best_val"], rel=1e-6)
    last = torch.load(tmp_path / "nt" / "last.pt", weights_only=False)
    assert "ax" in next(iter(last["optimizer"]["state"].values()))  # the averages are checkpointed


def test_resume_with_the_recipes_equals_an_uninterrupted_run(compose_cfg, tmp_path, monkeypatch):
    from helpers import crash_after

    common = [*LM_RUN, "model.num_layers=2", "model.dropout.input=0.2", "model.dropout.between=0.2",
              "model.dropout.output=0.2", "model.dropout.weight=0.3", "model.ar_alpha=1", "model.tar_beta=1",
              "data.variable_bptt.enabled=true", "data.variable_bptt.std=1", "data.variable_bptt.min_len=2",
              "optimizer=ntasgd", "optimizer.nonmono=1", "optimizer.lr=2.0", "scheduler=plateau",
              "trainer.max_epochs=4", "trainer.deterministic=true"]
    reference = run(compose_cfg(*common, output_dir=tmp_path / "ref"))
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        crash_after(patch, reference["steps"] // 2 + 1)
        with pytest.raises(KeyboardInterrupt):
            run(compose_cfg(*common, output_dir=out))
    resumed = run(compose_cfg(*common, "resume=auto", output_dir=out))
    for key in ("steps", "best_val", "best_step", "test_at_best_val", "test_last", "optimizer_switch"):
        assert resumed[key] == reference[key], key
    ref_csv = pd.read_csv(tmp_path / "ref" / "metrics.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(ref_csv, pd.read_csv(out / "metrics.csv").drop(columns="wall_time_s"))
