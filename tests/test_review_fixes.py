"""What an independent review of the SBO-RNN and AntisymmetricRNN presets found, each pinned by a test or a composed
config: the presets must run what their headers say."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import REPO
from rnnrepro.cells.classic import LSTM, TanhRNN
from rnnrepro.config import ConfigError, validate
from rnnrepro.training.optim import Schedule

EXPERIMENTS = REPO / "conf" / "experiment"


def _presets(folder: str) -> list[str]:
    return sorted(f"{folder}/{p.stem}" for p in (EXPERIMENTS / folder).glob("*.yaml"))


def _header(preset: str) -> str:
    lines = (EXPERIMENTS / f"{preset}.yaml").read_text().split("\n")
    return " ".join(line[2:] for line in lines if line.startswith("# "))


def _compose(compose_cfg, preset: str, *overrides: str):
    return compose_cfg(f"experiment={preset}", *overrides, tiny=False)


# --- HAR-2 loss: the header says what runs ------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [p for p in _presets("sbo_rnn") if "har2" in p])
def test_har2_presets_run_the_loss_their_header_names(preset, compose_cfg):
    cfg = _compose(compose_cfg, preset)
    assert cfg.data.loss == "softmax_mse" and cfg.data.head_outputs is None
    header = _header(preset)
    assert "data.loss=softmax_mse" in header and "nn.MSELoss()" in header
    assert "cross-entropy here" not in header
    assert cfg.data.val_split == "subject"


def test_har2_data_efficiency_presets_keep_the_stated_fraction(compose_cfg):
    for preset, fraction in (("sbo_rnn/har2_sbo_1pct", 0.01), ("sbo_rnn/har2_sbo_10pct", 0.1),
                             ("sbo_rnn/har2_sbo", 1.0)):
        assert _compose(compose_cfg, preset).data.train_fraction == pytest.approx(fraction)


# --- SBO-RNN schedule: the paper's linear weight-decay schedule is the default; the code's StepLR behind the flag ---
@pytest.mark.parametrize("preset", _presets("sbo_rnn"))
def test_sbo_presets_state_their_schedule(preset, compose_cfg):
    cfg = _compose(compose_cfg, preset)
    header = _header(preset)
    if preset == "sbo_rnn/pixel_mnist_sbo_code":  # the official code's behaviour
        assert cfg.scheduler.name == "step" and cfg.scheduler.step_size == 50 and cfg.scheduler.gamma == 0.5
        assert cfg.optimizer.weight_decay == 0 and "StepLR(step 50 epochs, gamma 0.5)" in header
    elif cfg.model.name == "sbo" or cfg.meta.table == "pixel_mnist":
        assert cfg.scheduler.name == "linear" and cfg.scheduler.target == "weight_decay"
        assert cfg.optimizer.weight_decay > 0 and cfg.scheduler.end_factor == 0
        assert "harness choice" in header.lower() and "weight_decay 1e-4" in header  # the endpoints are not found
        if cfg.model.name == "sbo":
            assert "scheduler=step" in header  # where the code's StepLR is
    else:  # adding-task baselines: no schedule, said so
        assert cfg.scheduler.name == "none" and "no schedule" in header
    validate(cfg)


def test_linear_weight_decay_schedule_moves_weight_decay_not_lr():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(2))], lr=1e-3, weight_decay=1e-4)
    cfg = OmegaConf.load(REPO / "conf" / "scheduler" / "linear_weight_decay.yaml")
    schedule = Schedule(cfg, opt, total_steps=4, total_epochs=1)
    seen = []
    for _ in range(5):
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
        schedule.step("step")
    assert [lr for lr, _ in seen] == [1e-3] * 5
    assert [wd for _, wd in seen] == pytest.approx([1e-4, 0.75e-4, 0.5e-4, 0.25e-4, 0.0])


def test_weight_decay_schedule_without_weight_decay_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match=r"^scheduler.target=weight_decay .* optimizer.weight_decay"):
        validate(compose_cfg("scheduler=linear_weight_decay"))
    validate(compose_cfg("scheduler=linear_weight_decay", "optimizer.weight_decay=1e-4"))


# --- the code-compatible SBO preset (the spec's pitfall 8) ---------------------------------------------------------
def test_code_compatible_sbo_preset_runs_the_official_codes_settings(compose_cfg):
    cfg = _compose(compose_cfg, "sbo_rnn/pixel_mnist_sbo_code")
    assert cfg.data.normalize == "repo_bug_uint8" and cfg.model.train_recurrent is False
    assert cfg.data.batch_size == 32 and cfg.optimizer.lr == pytest.approx(1e-2)
    assert cfg.trainer.report_best_test is True and cfg.trainer.max_epochs == 200
    assert "official code's behaviour" in cfg.meta.row
    paper = _compose(compose_cfg, "sbo_rnn/pixel_mnist_sbo")
    assert paper.data.normalize == "mean_std" and paper.model.train_recurrent is True and paper.data.batch_size == 64


def test_sbo_pmnist_uses_the_codes_permutation(compose_cfg):
    cfg = _compose(compose_cfg, "sbo_rnn/pmnist_sbo")
    assert cfg.data.name == "pmnist" and cfg.data.permutation == "pmnist_numpy12008"


def test_adding_presets_cover_the_figures_variants(compose_cfg):
    presets = set(_presets("sbo_rnn"))
    for T in (100, 500):
        for recurrent in ("dense", "sparse"):
            for solver in ("sgd", "shb", "snag"):
                cfg = _compose(compose_cfg, f"sbo_rnn/adding_t{T}_{recurrent}_{solver}")
                assert cfg.data.seq_len == T and cfg.model.solver == solver
                assert cfg.model.recurrent == ("dense_lowrank" if recurrent == "dense" else "sparse")
                assert cfg.trainer.max_steps == 25000
        assert {f"sbo_rnn/adding_t{T}_rnn", f"sbo_rnn/adding_t{T}_lstm"} <= presets


# --- baselines: settings the SBO code never had are marked ----------------------------------------------------------
@pytest.mark.parametrize("preset", ["sbo_rnn/pixel_mnist_rnn", "sbo_rnn/pixel_mnist_irnn"])
def test_non_gated_784_step_baselines_clip_and_say_so(preset, compose_cfg):
    cfg = _compose(compose_cfg, preset)
    assert cfg.trainer.grad_clip == pytest.approx(1.0)
    header = _header(preset)
    assert "clipped at 1.0" in header and "SBO repo trains no baseline" in header
    assert "follow the official code" not in header


@pytest.mark.parametrize("preset", _presets("antisymmetric_rnn"))
def test_antisymmetric_presets_mark_their_validation_split(preset, compose_cfg):
    cfg = _compose(compose_cfg, preset)
    header = _header(preset)
    assert cfg.data.val_fraction == pytest.approx(0.1)
    assert re.search(r"10% of the (60k|50k) training images", header) and "[not found]" in header
    if cfg.model.name == "lstm":  # the paper's LSTM baseline init
        assert cfg.model.init == "normal_input" and cfg.model.forget_bias == 1.0
        assert "N(0, 1/m)" in header


# --- the LSTM baseline init of the AntisymmetricRNN paper -----------------------------------------------------------
def test_normal_input_init_statistics():
    torch.manual_seed(0)
    m, n = 64, 256
    lstm = LSTM(m, n, init="normal_input", forget_bias=1.0, num_layers=2)
    for layer, fan_in in ((0, m), (1, n)):
        w_ih = lstm.weight("weight_ih", layer)
        assert abs(w_ih.mean().item()) < 0.01
        assert w_ih.var().item() == pytest.approx(1 / fan_in, rel=0.05)
        bias = lstm.weight("bias_ih", layer) + lstm.weight("bias_hh", layer)
        assert torch.equal(bias[n : 2 * n], torch.ones(n))  # forget gate
        assert not bias[:n].any() and not bias[2 * n :].any()
    # the recurrent weights keep torch's U(-1/sqrt(n), 1/sqrt(n))
    w_hh = lstm.weight("weight_hh", 0)
    assert w_hh.abs().max() <= 1 / n**0.5 and w_hh.var().item() == pytest.approx(1 / (3 * n), rel=0.05)
    rnn = TanhRNN(m, n, init="normal_input")
    assert rnn.weight("weight_ih", 0).var().item() == pytest.approx(1 / m, rel=0.05)
    with pytest.raises(ValueError, match="normal_input"):
        TanhRNN(m, n, init="gaussian")
