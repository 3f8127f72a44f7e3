"""Stable Recurrent Models: the projections, the derived LSTM condition, truncation, and the stability probe
(spec shared/papers/stable_recurrent_models.md section 9)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from helpers import REPO, write_tiny_music
from rnnrepro.api import run
from rnnrepro.cells.classic import LSTM, TanhRNN
from rnnrepro.cells.stable import clip_singular_values_, induced_norm, normalise_l1_, normalise_spectral_
from rnnrepro.config import ConfigError, validate
from rnnrepro.data.base import DataSpec
from rnnrepro.models import SequenceModel
from rnnrepro.stability import geometric_rate, jacobian_norms, stability_probe
from rnnrepro.tasks import TaskType, build_task
from rnnrepro.tasks.base import Meter

CONSTANTS = {"i": 0.395, "f": 0.155, "z": 0.099, "o": 0.395}


def _matrix(n=32, scale=2.0, seed=0):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale / n**0.5


# ------------------------------------------------------------------------------------------ 1. spectral projection
def test_spectral_clip_caps_sigma_keeps_the_rest_and_is_idempotent():
    w = _matrix()
    u, s, vh = torch.linalg.svd(w)
    assert s[0] > 1.5 and (s < 1).sum() > 5
    projected = w.clone()
    clip_singular_values_(projected, 1.0)
    u2, s2, vh2 = torch.linalg.svd(projected)
    assert s2[0] <= 1 + 1e-6
    torch.testing.assert_close(s2[s < 1], s[s < 1])  # below the cap: unchanged
    torch.testing.assert_close(projected, (u * s.clamp(max=1.0)) @ vh)  # same singular vectors
    twice = projected.clone()
    clip_singular_values_(twice, 1.0)
    torch.testing.assert_close(twice, projected)


def test_power_iteration_normalisation_reaches_the_cap_and_scales_uniformly():
    w = _matrix()
    s = torch.linalg.svdvals(w)
    v = torch.randn(w.shape[1], dtype=w.dtype)
    v /= v.norm()
    projected = w.clone()
    for _ in range(20):  # warm-started calls, as after successive optimizer steps
        normalise_spectral_(projected, v, 1.0, 10)
    s2 = torch.linalg.svdvals(projected)
    assert s2[0] == pytest.approx(1.0, abs=1e-3)
    torch.testing.assert_close(s2 / s2[0], s / s[0])  # every singular value scaled by the same factor


def test_rnn_projection_runs_in_place_on_the_fused_module():
    torch.manual_seed(0)
    for method in ("svd", "power_iter"):
        cell = TanhRNN(5, 16, stable={"enabled": True, "method": method, "max_sv": 0.9, "power_iterations": 200})
        with torch.no_grad():
            cell.rnn.weight_hh_l0.mul_(5)
        storage = cell.rnn.weight_hh_l0.data_ptr()
        cell.after_optimizer_step()
        assert cell.rnn.weight_hh_l0.data_ptr() == storage
        assert torch.linalg.matrix_norm(cell.rnn.weight_hh_l0, 2) <= 0.9 + 1e-4
        x = torch.randn(7, 3, 5)
        fused, _ = cell(x, return_sequence=True)  # the fused kernel reads the projected weights
        cell.impl = "cell"
        stepped, _ = cell(x, return_sequence=True)
        torch.testing.assert_close(fused, stepped, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ 2. contraction of the RNN
def test_projected_tanh_rnn_contracts_at_random_states():
    torch.manual_seed(1)
    cell = TanhRNN(4, 24, stable={"enabled": True, "method": "svd"})
    with torch.no_grad():
        cell.rnn.weight_hh_l0.mul_(4)
    cell.after_optimizer_step()
    gx = cell.project_inputs(torch.randn(1, 500, 4) * 3)[0]
    norms, method = jacobian_norms(cell, gx, torch.rand(500, 24) * 2 - 1)
    assert method == "exact" and norms.max() <= 1 + 1e-5
    assert norms.min() < 0.99  # a real check: not every norm sits at the bound


# --------------------------------------------------------------------------- 3. the LSTM normalisation axis
@pytest.mark.parametrize("axis", ["rows", "cols"])
def test_lstm_blocks_get_their_l1_norm_on_the_chosen_axis(axis):
    torch.manual_seed(2)
    n = 12
    cell = LSTM(6, n, stable={"enabled": True, "norm_axis": axis, "norm_mode": "rescale"})
    cell.after_optimizer_step()
    w_hh, u_f = cell.rnn.weight_hh_l0.detach(), cell.rnn.weight_ih_l0.detach()[n : 2 * n]
    dim, induced = (1, "linf") if axis == "rows" else (0, "l1")
    for k, gate in enumerate("ifzo"):
        block = w_hh[k * n : (k + 1) * n]
        torch.testing.assert_close(block.abs().sum(dim), torch.full((n,), CONSTANTS[gate]))
        assert induced_norm(block, induced) == pytest.approx(CONSTANTS[gate], rel=1e-5)
    torch.testing.assert_close(u_f.abs().sum(dim), torch.full((n if axis == "rows" else 6,), 0.25))
    # the other input blocks and the biases are free
    assert cell.rnn.weight_ih_l0[:n].abs().sum(1).max() > 0.5


def test_rows_and_columns_bound_different_norms():
    block = torch.tensor([[3.0, 1.0], [0.0, 1.0]])
    rows, cols = block.clone(), block.clone()
    normalise_l1_(rows, 1.0, "rows", "rescale")
    normalise_l1_(cols, 1.0, "cols", "rescale")
    assert induced_norm(rows, "linf") == pytest.approx(1.0) and induced_norm(rows, "l1") > 1.0
    assert induced_norm(cols, "l1") == pytest.approx(1.0) and induced_norm(cols, "linf") > 1.0


def test_clip_mode_is_a_projection_and_rescale_is_not():
    inside = torch.tensor([[0.1, -0.1], [0.05, 0.0]])
    clipped, rescaled = inside.clone(), inside.clone()
    normalise_l1_(clipped, 0.395, "rows", "clip")
    normalise_l1_(rescaled, 0.395, "rows", "rescale")
    torch.testing.assert_close(clipped, inside)  # already inside the ball: unchanged
    torch.testing.assert_close(rescaled.abs().sum(1), torch.tensor([0.395, 0.395]))  # scaled up (code)
    zero = torch.zeros(2, 2)
    normalise_l1_(zero, 0.5, "rows", "rescale")  # no direction: stays zero, no NaN
    assert torch.equal(zero, torch.zeros(2, 2))


# ------------------------------------------------------------------------------------ 4. derived condition (S8)
def _lstm_step(w, u_f_x, pre_x, h, c):
    n = h.shape[-1]
    gates = pre_x + h @ w.t()
    gates[..., n : 2 * n] += u_f_x
    i, f, z, o = gates.chunk(4, -1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new, torch.sigmoid(f)


def test_derived_lstm_condition_s8_holds_empirically():
    lam = 0.6
    assert CONSTANTS["f"] + 0.25 <= math.log(lam / (1 - lam)) + 1e-9  # 0.405 <= logit(0.6) = 0.4055
    assert CONSTANTS["i"] < 1 - lam and CONSTANTS["o"] < 1 - lam
    assert CONSTANTS["z"] < (1 - lam) / 4 and CONSTANTS["f"] < (1 - lam) ** 2
    factor_c = lam + CONSTANTS["f"] / (4 * (1 - lam)) + CONSTANTS["i"] / 4 + CONSTANTS["z"]
    factor = factor_c + CONSTANTS["o"] / 4
    assert factor == pytest.approx(0.9934, abs=1e-4) and factor < 1

    torch.manual_seed(3)
    n, m = 16, 10
    cell = LSTM(m, n, forget_bias=0.0, stable={"enabled": True, "norm_axis": "rows", "norm_mode": "rescale",
                                                "constrain_forget_bias": True})
    with torch.no_grad():
        cell.rnn.bias_ih_l0.zero_()
        cell.rnn.bias_hh_l0.zero_()
    cell.after_optimizer_step()
    w = cell.rnn.weight_hh_l0.detach().double()
    w_ih = cell.rnn.weight_ih_l0.detach().double()
    x = torch.rand(4000, m, dtype=torch.float64) * 2 - 1  # ||x||_inf <= 1
    pre_x = x @ w_ih.t()
    u_f_x = pre_x[:, n : 2 * n].clone()
    pre_x[:, n : 2 * n] = 0
    h1, h2 = (torch.rand(2, 4000, n, dtype=torch.float64) * 2 - 1).unbind(0)
    c1, c2 = ((torch.rand(2, 4000, n, dtype=torch.float64) * 2 - 1) * 2.5).unbind(0)  # |c| <= 1 / (1 - lam)
    hn1, cn1, f1 = _lstm_step(w, u_f_x, pre_x, h1, c1)
    hn2, cn2, _ = _lstm_step(w, u_f_x, pre_x, h2, c2)
    assert f1.max() <= lam
    before = torch.maximum((c1 - c2).abs().amax(1), (h1 - h2).abs().amax(1))
    after = torch.maximum((cn1 - cn2).abs().amax(1), (hn1 - hn2).abs().amax(1))
    ratio = after / before
    assert ratio.max() <= factor + 1e-9
    assert ratio.max() > 0.3  # the bound is not vacuous on these pairs


def test_constrain_forget_bias_clamps_both_bias_slices():
    cell = LSTM(3, 4, forget_bias=5.0, stable={"enabled": True, "constrain_forget_bias": True})
    cell.after_optimizer_step()
    assert cell.rnn.bias_ih_l0[4:8].max() <= 0 and cell.rnn.bias_hh_l0[4:8].max() <= 0
    assert cell.rnn.bias_ih_l0[:4].abs().sum() > 0  # other gates untouched


# ------------------------------------------------------------------------------------------ 5. truncation
def _sequence_model(cell, outputs=3, task=TaskType.regression_each):
    torch.manual_seed(0)
    return SequenceModel(cell, nn.Linear(cell.hidden_size, outputs), build_task(task))


def test_truncated_model_equals_running_each_window_from_zero():
    torch.manual_seed(4)
    model = _sequence_model(TanhRNN(3, 8)).eval()
    x = torch.randn(2, 9, 3)
    model.truncation = 4
    out, _ = model(x)
    for t in range(9):
        window = x[:, max(0, t - 3) : t + 1]
        expected, _ = model.cell(window.transpose(0, 1), None)
        torch.testing.assert_close(out[:, t], model.head(expected))


def test_truncation_gap_shrinks_geometrically_for_a_projected_rnn():
    torch.manual_seed(5)
    cell = TanhRNN(4, 32, stable={"enabled": True, "method": "svd", "max_sv": 0.8})
    with torch.no_grad():
        cell.rnn.weight_hh_l0.mul_(3)
    cell.after_optimizer_step()
    model = _sequence_model(cell).eval().requires_grad_(False)
    x = torch.randn(8, 60, 4) * 2
    model.truncation = None
    h_full, _ = model.features(x)
    ks, gaps = [1, 2, 4, 8, 16, 24], []
    for k in ks:
        model.truncation = k
        h_k, _ = model.features(x)
        gaps.append(float((h_full[k:] - h_k[k:]).norm(dim=-1).max()))
        assert gaps[-1] <= 0.8**k * 32**0.5 + 1e-5  # ||h_t - h_t^k|| <= lambda^k ||h_{t-k}||
    assert all(a > b for a, b in zip(gaps, gaps[1:]))
    assert geometric_rate(ks, gaps) < 0.8


def test_geometric_rate_recovers_a_known_factor():
    assert geometric_rate([1, 2, 3, 5], [0.5**k * 3 for k in (1, 2, 3, 5)]) == pytest.approx(0.5)
    assert math.isnan(geometric_rate([1, 2], [0.0, 0.0]))


# ----------------------------------------------------------------------------- 7. the JSB LSTM recurrence bug
@pytest.mark.parametrize("recurrent", [True, False])
def test_jsb_lstm_recurrence_flag(compose_cfg, tmp_path, recurrent):
    from rnnrepro.models import build_model

    cfg = compose_cfg("model=lstm", "dataset=jsb", "model.hidden_size=16", f"model.lstm_recurrent={recurrent}")
    validate(cfg)
    spec = DataSpec(input_size=88, output_size=88, task=TaskType.multilabel_each)
    model = build_model(cfg.model, spec, build_task(TaskType.multilabel_each)).eval()
    assert model.truncation == (None if recurrent else 1)
    x = (torch.rand(1, 8, 88) < 0.1).float()
    y = x.clone()
    y[0, 1] = 1 - y[0, 1]  # change frame 1
    changed = (model(x)[0][0, 5] - model(y)[0][0, 5]).abs().max()
    assert (changed > 1e-6) == recurrent


def test_lstm_recurrent_false_with_another_truncation_is_refused(compose_cfg):
    from rnnrepro.models import build_model

    cfg = compose_cfg("model=lstm", "model.lstm_recurrent=false", "model.truncation=3", "dataset=jsb")
    spec = DataSpec(input_size=88, output_size=88, task=TaskType.multilabel_each)
    with pytest.raises(ValueError, match="lstm_recurrent=false is the 1-truncated model"):
        build_model(cfg.model, spec, build_task(TaskType.multilabel_each))


def test_online_algorithms_refuse_the_truncated_model(compose_cfg):
    cfg = compose_cfg("model=rnn", "algorithm=rtrl", "dataset=copy_memory", "model.truncation=2")
    with pytest.raises(ConfigError, match="truncated model"):
        validate(cfg)


# ------------------------------------------------------------------------------------------ 8. the JSB loss
def test_piece_sum_loss_is_the_codes_sum_over_frames():
    out = torch.randn(2, 5, 88)
    y = (torch.rand(2, 5, 88) < 0.2).float()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    batch = {"y": y, "mask": mask}
    nll = nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none").sum(-1)
    by_hand = (nll[0].sum() + nll[1, :3].sum()) / 2
    summed = build_task(TaskType.multilabel_each, loss="piece_sum").loss(out, batch)
    mean = build_task(TaskType.multilabel_each).loss(out, batch)
    torch.testing.assert_close(summed, by_hand)
    torch.testing.assert_close(mean, (nll[0].sum() + nll[1, :3].sum()) / 8)
    meter = Meter()
    build_task(TaskType.multilabel_each, loss="piece_sum").update(meter, torch.zeros(1, 4, 88),
                                                                  {"y": y[:1, :4], "mask": mask[:1, :4]})
    assert meter.averages()["nll"] == pytest.approx(88 * math.log(2), rel=1e-6)  # the metric stays per frame


def test_rnn_bias_slice_init_sets_the_codes_quarter():
    cell = TanhRNN(3, 8, bias_slice_init=10.0)
    for bias in (cell.rnn.bias_ih_l0, cell.rnn.bias_hh_l0):
        assert torch.all(bias[2:4] == 10.0) and torch.all(bias[:2].abs() < 1)


# ----------------------------------------------------------------- 9. projection after every optimizer step
@pytest.mark.parametrize("model_args", [
    ["model=rnn", "model.stable.enabled=true", "model.stable.method=svd", "model.stable.max_sv=0.7"],
    ["model=lstm", "model.stable.enabled=true", "model.stable.norm_axis=cols"],
])
def test_constraint_holds_after_every_optimizer_step_in_the_trainer(compose_cfg, tmp_path, monkeypatch, model_args):
    write_tiny_music(tmp_path / "data")
    checks = []
    original = SequenceModel.after_optimizer_step

    def checked(self):
        original(self)
        w = self.cell.rnn.weight_hh_l0.detach()
        if isinstance(self.cell, LSTM):
            n = self.cell.hidden_size
            checks.append(max(abs(induced_norm(w[k * n : (k + 1) * n], "l1") - c)
                              for k, c in enumerate(CONSTANTS.values())))
        else:
            checks.append(float(torch.linalg.matrix_norm(w, 2)) - 0.7)

    monkeypatch.setattr(SequenceModel, "after_optimizer_step", checked)
    cfg = compose_cfg(*model_args, "dataset=jsb", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false",
                      "model.hidden_size=12", "optimizer=sgd", "optimizer.lr=5.0", "trainer.max_steps=5",
                      "trainer.max_epochs=5", "data.train_loss=piece_sum", "trainer.stability_probe_every=1")
    summary = run(cfg)
    assert summary["status"] == "completed" and len(checks) == summary["steps"] == 5
    assert max(checks) <= 1e-5
    probe = summary["stability_probe"]
    assert probe["method"] == "exact" and 0 <= probe["frac_below_1"] <= 1 and probe["points"] > 0


# ------------------------------------------------------------------------------------------ the stability probe
def test_probe_equals_the_hand_computed_jacobian_norm_of_a_2_unit_rnn():
    cell = TanhRNN(1, 2)
    with torch.no_grad():
        cell.rnn.weight_hh_l0.copy_(torch.tensor([[0.9, -0.4], [0.3, 1.2]]))
        cell.rnn.weight_ih_l0.copy_(torch.tensor([[0.5], [-1.0]]))
        cell.rnn.bias_ih_l0.copy_(torch.tensor([0.1, 0.0]))
        cell.rnn.bias_hh_l0.zero_()
    model = _sequence_model(cell, outputs=1)
    xs = [0.3, -0.7, 1.1]
    h, expected = torch.zeros(2), []
    w, u, b = cell.rnn.weight_hh_l0.detach(), cell.rnn.weight_ih_l0.detach()[:, 0], cell.rnn.bias_ih_l0.detach()
    for x in xs:
        h = torch.tanh(w @ h + u * x + b)
        expected.append(float(torch.linalg.matrix_norm(torch.diag(1 - h**2) @ w, 2)))
    batch = {"x": torch.tensor(xs).reshape(1, 3, 1)}
    exact = stability_probe(model, [batch], max_points=10)
    power = stability_probe(model, [batch], max_points=10, iterations=200, exact_max_dim=0)
    expected_t = torch.tensor(expected, dtype=torch.float64)
    assert exact["method"] == "exact" and power["method"] == "power200"
    for probe in (exact, power):
        assert probe["points"] == 3
        assert probe["max"] == pytest.approx(float(expected_t.max()), rel=1e-4)
        assert probe["median"] == pytest.approx(float(expected_t.median()), rel=1e-4)
        assert probe["frac_below_1"] == pytest.approx(float((expected_t < 1).double().mean()))


def test_probe_refuses_stacked_layers(compose_cfg):
    cfg = compose_cfg("model=lstm", "model.num_layers=2", "trainer.stability_probe_every=1")
    with pytest.raises(ConfigError, match="stability_probe_every"):
        validate(cfg)


# ------------------------------------------------------------------------------------------ scripts/truncation.py
def test_truncation_script_on_a_trained_run(compose_cfg, tmp_path):
    write_tiny_music(tmp_path / "data")
    cfg = compose_cfg("model=rnn", "dataset=jsb", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false",
                      "model.hidden_size=16", "model.stable.enabled=true", "model.stable.max_sv=0.8",
                      "trainer.max_steps=3", output_dir=tmp_path / "run")
    assert run(cfg)["status"] == "completed"
    out = tmp_path / "report" / "trunc"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "truncation.py"), f"runs=[{tmp_path / 'run'}]",
                           "ks=[1,2,4,8]", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import pandas as pd

    frame = pd.read_csv(f"{out}.csv")
    assert frame.k.tolist() == [1, 2, 4, 8]
    assert frame.distance_mean.is_monotonic_decreasing and frame.distance_mean.iloc[-1] < frame.distance_mean.iloc[0]
    probe = pd.read_csv(f"{out}_probe.csv")
    assert probe.sigma_max_w_hh.iloc[0] <= 0.8 + 1e-5 and probe.probe_max.iloc[0] <= 0.8 + 1e-4
    assert (out.parent / "trunc.png").exists() and "Provenance" in (out.parent / "trunc.md").read_text()
    assert str(tmp_path) not in (out.parent / "trunc.md").read_text()  # no machine paths in the report
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


def test_truncation_script_compares_trained_truncated_runs(compose_cfg, tmp_path):
    """Part (b): a run trained with model.truncation=k against the recurrent run of the same preset and seed."""
    write_tiny_music(tmp_path / "data")
    common = ["model=rnn", "dataset=jsb", f"data.root={tmp_path / 'data'}", "data.verify_checksums=false",
              "model.hidden_size=16", "trainer.max_steps=3", "seed=3"]
    summaries = {}
    for name, extra in (("recurrent", []), ("k2", ["model.truncation=2"])):
        summaries[name] = run(compose_cfg(*common, *extra, output_dir=tmp_path / name))
        assert summaries[name]["status"] == "completed"
    out = tmp_path / "report" / "trained"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "truncation.py"), f"runs=[{tmp_path / 'recurrent'}]",
                           "ks=[1,2]", "probe=false", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}",
                           f"trained=[{{recurrent:{tmp_path / 'recurrent'},truncated:[{tmp_path / 'k2'}]}}]"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    import pandas as pd

    trained = pd.read_csv(f"{out}_trained.csv")
    assert trained.k.tolist() == [2] and trained.seed.tolist() == [3]
    gap = summaries["k2"]["test_at_best_val"] - summaries["recurrent"]["test_at_best_val"]
    assert trained.test_gap.iloc[0] == pytest.approx(gap)
    assert 0 < trained.relative_weight_distance.iloc[0] < 1  # same init, three different steps
    assert "Trained truncated models" in (out.parent / "trained.md").read_text()
