"""The MomentumRNN LSTM family (rnnrepro/cells/momentum.py) against the spec's section 9
(shared/papers/momentum_rnn.md): hand-computed recurrences, the reductions, restart coefficients, the forget-bias fixed
point, parameter counts, and the fused path equal to the step path."""

from __future__ import annotations

import pytest
import torch

from rnnrepro.cells.momentum import MomentumLSTM, restart_coefficients
from rnnrepro.config import ConfigError, validate

torch.set_default_dtype(torch.float32)


def _pair(**kwargs):
    """The same weights under impl=fused and impl=cell, in float64."""
    torch.manual_seed(0)
    fused = MomentumLSTM(3, 4, impl="fused", **kwargs).double()
    cell = MomentumLSTM(3, 4, impl="cell", **kwargs).double()
    cell.load_state_dict(fused.state_dict())
    return fused, cell


def _lstm_by_hand(pre, c):
    i, f, g, o = pre.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _by_hand(cell: MomentumLSTM, x: torch.Tensor, form: str | None = None):
    """Every variant's equations (M1)-(M6) written out for a 2-3 step sequence, from v_0 = m_0 = 0."""
    W, bW, U, bU = cell.x2h.weight, cell.x2h.bias, cell.h2h.weight, cell.h2h.bias
    B, n = x.shape[1], cell.hidden_size
    h, c = torch.zeros(B, n, dtype=x.dtype), torch.zeros(B, n, dtype=x.dtype)
    v, m = torch.zeros(B, 4 * n, dtype=x.dtype), torch.zeros(B, 4 * n, dtype=x.dtype)
    k = 1
    for x_t in x:
        a, r = x_t @ W.T + bW, h @ U.T + bU
        ck = (k - 1) / (k + 2)
        if cell.variant == "lstm":
            pre = a + r
        elif cell.variant == "momentum":
            v = cell.mu * v + cell.s * a
            pre = v + r
        elif cell.variant in ("adam", "rmsprop"):
            v = cell.mu * v + cell.s * a
            m = cell.beta * m + (1 - cell.beta) * a * a
            pre = v / torch.sqrt(m + 1e-16) + r
        elif form == "A":
            v_new = r - cell.s * a
            pre = v_new + ck * (v_new - v)
            v = v_new
        else:
            v = ck * v + cell.s * a
            pre = v + r
        h, c = _lstm_by_hand(pre, c)
        k = 1 if cell.restart and k % cell.restart == 0 else k + 1
    return h


@pytest.mark.parametrize("kwargs, form", [
    (dict(variant="lstm"), None),
    (dict(variant="momentum", mu=0.6, step=0.6), None),
    (dict(variant="adam", mu=0.6, step=0.6, beta=0.1), None),
    (dict(variant="rmsprop", mu=0.0, step=0.6, beta=0.9), None),
    (dict(variant="nesterov", step=1.0, restart=2, nesterov_form="A"), "A"),
    (dict(variant="nesterov", step=0.6, restart=2, nesterov_form="B"), "B"),
])
def test_each_variant_matches_its_equation_by_hand(kwargs, form):
    torch.manual_seed(1)
    cell = MomentumLSTM(2, 3, impl="cell", init="torch_default", **kwargs).double()
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    h, _ = cell(x)
    torch.testing.assert_close(h, _by_hand(cell, x, form), rtol=0, atol=1e-12)


def test_momentum_with_mu_0_and_s_1_is_the_authors_lstm():
    torch.manual_seed(2)
    lstm = MomentumLSTM(3, 5, impl="cell", variant="lstm").double()
    momentum = MomentumLSTM(3, 5, impl="cell", variant="momentum", mu=0.0, step=1.0).double()
    momentum.load_state_dict(lstm.state_dict())
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    assert torch.equal(lstm(x)[0], momentum(x)[0])


def test_rmsprop_is_adam_at_mu_0_and_refuses_another_mu(compose_cfg):
    torch.manual_seed(3)
    adam = MomentumLSTM(3, 4, impl="cell", variant="adam", mu=0.0, step=0.6, beta=0.9).double()
    rmsprop = MomentumLSTM(3, 4, impl="cell", variant="rmsprop", mu=0.0, step=0.6, beta=0.9).double()
    rmsprop.load_state_dict(adam.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    assert torch.equal(adam(x)[0], rmsprop(x)[0])
    with pytest.raises(ConfigError, match="RMSPropLSTM is AdamLSTM with mu = 0"):
        validate(compose_cfg("model=momentum_lstm", "model.variant=rmsprop", "model.mu=0.6", "model.impl=cell"))


def test_restart_coefficients():
    assert restart_coefficients(4, 0) == pytest.approx([0.0, 1 / 4, 2 / 5, 1 / 2])
    assert restart_coefficients(5, 2) == pytest.approx([0.0, 1 / 4, 0.0, 1 / 4, 0.0])
    assert restart_coefficients(4, 40) == restart_coefficients(4, 0)


def test_nesterov_forms_differ_on_the_same_weights():
    torch.manual_seed(4)
    a = MomentumLSTM(3, 4, impl="cell", variant="nesterov", step=0.6, restart=2, nesterov_form="A").double()
    b = MomentumLSTM(3, 4, impl="cell", variant="nesterov", step=0.6, restart=2, nesterov_form="B").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert (a(x)[0] - b(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("mu, s, fg, expected", [(0.6, 0.6, 1.0, 2.5), (0.3, 0.1, -4.0, -4.0 - 0.4 / 0.7)])
def test_velocity_fixed_point_and_effective_forget_bias(mu, s, fg, expected):
    """Zero input: v_t -> s b_W / (1 - mu); the forget gate's pre-activation -> b_U + s b_W / (1 - mu) (spec test 2:
    2.5 for the MNIST recipe, -4.57 for TIMIT's). U's forget block is zero at the authors' init (eye_ fills only the
    input gate's block), so the fixed point is exact in that block."""
    cell = MomentumLSTM(1, 6, impl="cell", variant="momentum", mu=mu, step=s, fg_init=fg).double()
    n = cell.hidden_size
    assert torch.equal(cell.h2h.weight[n:], torch.zeros(3 * n, n, dtype=torch.float64))
    assert torch.equal(cell.h2h.weight[:n], torch.eye(n, dtype=torch.float64))
    _, (h, c, v) = cell(torch.zeros(200, 1, 1, dtype=torch.float64))
    forget = v[0, n : 2 * n] + cell.h2h.bias[n : 2 * n]
    torch.testing.assert_close(forget, torch.full((n,), expected, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(variant="lstm"), dict(variant="momentum", mu=0.6, step=0.6), dict(variant="momentum", mu=0.0, step=0.6),
    dict(variant="nesterov", nesterov_form="B", step=0.6, restart=2),
    dict(variant="nesterov", nesterov_form="B", step=0.6, restart=0),
])
def test_fused_equals_step_path_in_float64(kwargs):
    fused, cell = _pair(**kwargs)
    x = torch.randn(30, 5, 3, dtype=torch.float64)
    out_f, state_f = fused(x, return_sequence=True)
    out_c, state_c = cell(x, return_sequence=True)
    torch.testing.assert_close(out_f, out_c, rtol=0, atol=1e-12)
    for a, b in zip(state_f, state_c):  # h, c and the last velocity
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    grads_f = torch.autograd.grad(out_f.square().sum(), list(fused.parameters()))
    grads_c = torch.autograd.grad(out_c.square().sum(), list(cell.parameters()))
    for a, b in zip(grads_f, grads_c):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_equals_step_path_in_float32_at_mnist_length():
    torch.manual_seed(5)
    fused = MomentumLSTM(1, 16, impl="fused", variant="momentum", mu=0.6, step=0.6)
    cell = MomentumLSTM(1, 16, impl="cell", variant="momentum", mu=0.6, step=0.6)
    cell.load_state_dict(fused.state_dict())
    x = torch.rand(784, 4, 1)
    torch.testing.assert_close(fused(x)[0], cell(x)[0], rtol=1e-4, atol=1e-5)


def test_a_carried_velocity_takes_the_step_path_with_the_same_result():
    fused, cell = _pair(variant="momentum", mu=0.6, step=0.6)
    x1, x2 = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(6, 2, 3, dtype=torch.float64)
    _, state = cell(x1)
    assert state[2].abs().sum() > 0
    torch.testing.assert_close(fused(x2, state)[0], cell(x2, state)[0], rtol=0, atol=1e-12)


def test_fused_is_refused_where_no_fused_path_exists(compose_cfg):
    for variant in ("adam", "rmsprop"):
        with pytest.raises(ConfigError, match="has no fused path yet"):
            validate(compose_cfg("model=momentum_lstm", f"model.variant={variant}", "model.mu=0.0"))
    with pytest.raises(ConfigError, match="form A"):
        validate(compose_cfg("model=momentum_lstm", "model.variant=nesterov", "model.nesterov_form=A"))


@pytest.mark.parametrize("dataset_args, n, expected", [
    (["data.pixels_per_step=1"], 128, 68_362), (["data.pixels_per_step=1"], 256, 267_786),
    (["dataset=timit"], 84, 83_205), (["dataset=timit"], 120, 136_089), (["dataset=timit"], 158, 203_159),
])
@pytest.mark.parametrize("variant", ["lstm", "momentum", "adam", "nesterov"])
def test_parameter_counts_equal_the_spec_for_every_variant(compose_cfg, tmp_path, dataset_args, n, expected,
                                                           variant):
    """The spec's section 6.4 counts (two bias vectors, Linear(N, out)); momentum parameters are not learned."""
    from helpers import write_tiny_timit
    from rnnrepro.data import build_datamodule
    from rnnrepro.models import build_model
    from rnnrepro.tasks import build_task

    if dataset_args[0] == "dataset=timit":
        write_tiny_timit(tmp_path)
        dataset_args = [*dataset_args, f"data.root={tmp_path}"]
    cfg = compose_cfg(*dataset_args, "model=momentum_lstm", f"model.variant={variant}", f"model.hidden_size={n}",
                      "model.impl=cell", "model.mu=0.0" if variant == "adam" else "model.mu=0.6")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    model = build_model(cfg.model, data.spec, build_task(data.spec.task))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_train_on_all_trains_on_every_training_image_and_validates_in_sample(compose_cfg):
    from rnnrepro.data import build_datamodule

    honest = build_datamodule(compose_cfg("data.val_fraction=0.1").data, 0)
    honest.setup()
    everything = build_datamodule(compose_cfg("data.val_fraction=0.1", "data.train_on_all=true").data, 0)
    everything.setup()
    n_train = len(honest.splits["train"]) + len(honest.splits["val"])
    assert len(everything.splits["train"]) == n_train and torch.equal(everything.splits["val"], honest.splits["val"])
    assert set(everything.splits["val"].tolist()) <= set(everything.splits["train"].tolist())
    assert everything.describe()["train_on_all"] and not honest.describe()["train_on_all"]
