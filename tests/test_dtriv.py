"""The MomentumRNN orthogonal family (rnnrepro/cells/dtriv.py): spec section 9 for DTRIV and its momentum variants:
each recurrence by hand, RMSProp = Adam at mu 0, B orthogonal after updates and rebases, the spec's parameter
counts, A's own optimizer, and exact resume through the rebase counters."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from helpers import crash_after
from rnnrepro.api import run
from rnnrepro.cells.dtriv import DTRIV, init_skew_, mod_relu, skew
from rnnrepro.config import ConfigError, validate
from rnnrepro.training.optim import CompositeOptimizer, build_optimizer

DT = torch.float64


def cell(**kwargs) -> DTRIV:
    torch.manual_seed(0)
    c = DTRIV(2, 3, **kwargs).to(DT)
    with torch.no_grad():  # a generic A, so B is a full orthogonal matrix, not the init's block rotations
        c.A.copy_(torch.randn(3, 3, dtype=DT) * 0.5)
        c.modrelu_bias.copy_(torch.tensor([0.3, -0.2, 0.05], dtype=DT))
    return c


def by_hand(c: DTRIV, x: torch.Tensor, variant: str, mu=0.0, s=1.0, beta=0.0, restart=0, eps=1e-16):
    """Two-step reference straight from the spec's equations (M7)-(M10), (M12)."""
    B = c.base @ torch.linalg.matrix_exp(skew(c.A))
    W, b = c.input_kernel.weight, c.modrelu_bias
    h = torch.zeros(x.shape[1], 3, dtype=DT)
    v = torch.zeros_like(h)
    m = torch.zeros_like(h)
    k = 1
    for t in range(x.shape[0]):
        a = x[t] @ W.T
        if variant == "dtriv":
            u = a
        elif variant == "momentum":
            v = mu * v + s * a
            u = v
        elif variant == "nesterov":
            v = (k - 1) / (k + 2) * v + s * a
            u = v
            k = 1 if restart and k % restart == 0 else k + 1
        else:
            v = mu * v + s * a
            m = beta * m + (1 - beta) * a * a
            u = v / torch.sqrt(m + eps)
        z = u + h @ B
        h = torch.sign(z) * torch.clamp(z.abs() + b, min=0)
    return h


@pytest.mark.parametrize("variant, kwargs", [
    ("dtriv", {}), ("momentum", {"mu": 0.6, "step": 0.9}), ("adam", {"mu": 0.3, "step": 0.3, "beta": 0.8}),
    ("rmsprop", {"mu": 0.0, "step": 0.3, "beta": 0.9}), ("nesterov", {"step": 0.3, "restart": 2}),
])
def test_each_variant_matches_its_equation_by_hand(variant, kwargs):
    c = cell(variant=variant, **kwargs)
    x = torch.randn(5, 4, 2, dtype=DT)
    out, _ = c(x)
    ref = by_hand(c, x, variant, mu=kwargs.get("mu", 0.0), s=kwargs.get("step", 1.0), beta=kwargs.get("beta", 0.0),
                  restart=kwargs.get("restart", 0))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_rmsprop_is_adam_at_mu_0_and_refuses_another_mu(compose_cfg):
    x = torch.randn(6, 2, 2, dtype=DT)
    adam, rms = cell(variant="adam", mu=0.0, beta=0.9), cell(variant="rmsprop", mu=0.0, beta=0.9)
    torch.testing.assert_close(adam(x)[0], rms(x)[0], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="model.mu"):
        validate(compose_cfg("model=momentum_dtriv", "model.variant=rmsprop", "model.mu=0.3"))
    with pytest.raises(ConfigError, match="model.rebase_every"):
        validate(compose_cfg("model=momentum_dtriv", "model.rebase_every=0"))


def test_mod_relu_keeps_the_sign_and_shrinks_the_magnitude():
    z = torch.tensor([-2.0, -0.05, 0.0, 0.05, 2.0])
    torch.testing.assert_close(mod_relu(z, torch.tensor(-0.1)), torch.tensor([-1.9, 0.0, 0.0, 0.0, 1.9]))


@pytest.mark.parametrize("kind, low, high", [("cayley", -1.0, 0.0), ("henaff", -math.pi, math.pi)])
def test_skew_inits_are_block_diagonal_rotations(kind, low, high):
    a = init_skew_(torch.empty(7, 7), kind)
    assert torch.equal(a, -a.T)
    angles = torch.diagonal(a, 1)[::2]
    assert torch.count_nonzero(a) == 2 * 3 and torch.count_nonzero(angles) == 3  # pairs (0,1), (2,3), (4,5)
    assert bool(((angles >= low) & (angles <= high)).all())
    # cayley: -sqrt((1 - cos θ)/(1 + cos θ)) = -tan(θ/2) for θ in [0, π/2], so in [-1, 0]


def test_construction_rebases_once_and_keeps_b():
    torch.manual_seed(3)
    c = DTRIV(1, 6, variant="dtriv", init="henaff")
    assert int(c.rebases) == 1 and torch.count_nonzero(c.A) == 0  # the code's first B: base <- expm(S_init), A <- 0
    assert not torch.allclose(c.base, torch.eye(6))


@pytest.mark.parametrize("rebase_every, project_every", [(1, 100), (3, 2), (None, 100)])
def test_b_stays_orthogonal_through_updates_and_rebases(rebase_every, project_every):
    torch.manual_seed(0)
    c = DTRIV(2, 16, variant="momentum", mu=0.6, step=0.9, rebase_every=rebase_every, project_every=project_every,
              orth_lr=1e-3)
    opt = torch.optim.SGD([p for n, p in c.named_parameters() if n != "A"], lr=1e-3)
    orth = c.own_optimizers()[0][1]([c.A])
    x = torch.randn(10, 4, 2)
    for _ in range(12):
        before = c.recurrent_matrix().detach()
        out, _ = c(x)
        out.square().sum().backward()
        opt.step(), orth.step(), opt.zero_grad(), orth.zero_grad()
        updated = c.recurrent_matrix().detach()
        c.after_optimizer_step()
        torch.testing.assert_close(c.recurrent_matrix().detach(), updated, rtol=0, atol=1e-5)  # a rebase keeps B
        assert not torch.allclose(updated, before)  # A did move B
        B = c.recurrent_matrix().detach()
        torch.testing.assert_close(B.T @ B, torch.eye(16), rtol=0, atol=1e-5)
    expected = 1 + (12 // rebase_every if rebase_every else 0)
    assert int(c.rebases) == expected
    if rebase_every == 1:
        assert torch.count_nonzero(c.A) == 0


def test_parameters_of_a_are_trained_by_their_own_rmsprop(compose_cfg):
    from rnnrepro.data import build_datamodule
    from rnnrepro.models import build_model
    from rnnrepro.tasks import build_task

    cfg = compose_cfg("model=momentum_dtriv", "dataset=pmnist", "model.orth_lr=2e-4", "optimizer=rmsprop",
                      "optimizer.lr=7e-4")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    model = build_model(cfg.model, data.spec, build_task(data.spec.task))
    opt = build_optimizer(cfg.optimizer, model)
    assert isinstance(opt, CompositeOptimizer)
    main, orth = opt.optimizers
    a = model.cell.A
    assert [p for g in orth.param_groups for p in g["params"]] == [a]
    assert all(p is not a for g in main.param_groups for p in g["params"])
    assert isinstance(orth, torch.optim.RMSprop) and orth.param_groups[0]["lr"] == 2e-4
    assert orth.param_groups[0]["alpha"] == 0.99 and main.param_groups[0]["lr"] == 7e-4
    n_main = sum(p.numel() for g in main.param_groups for p in g["params"])
    assert n_main + a.numel() == sum(p.numel() for p in model.parameters())
    state = opt.state_dict()
    opt.load_state_dict(state)
    with pytest.raises(ValueError, match="optimizer state"):
        opt.load_state_dict(main.state_dict())


@pytest.mark.parametrize("dataset_args, n, numel, free", [
    (["dataset=pmnist", "data.pixels_per_step=1"], 170, 30_950, 16_415),
    (["dataset=pmnist", "data.pixels_per_step=1"], 360, None, 68_950),
    (["dataset=pmnist", "data.pixels_per_step=1"], 512, None, 136_970),
    (["dataset=timit"], 224, 108_321, 83_121), (["dataset=timit"], 322, None, 135_208),
])
@pytest.mark.parametrize("variant", ["dtriv", "momentum", "adam", "nesterov"])
def test_parameter_counts_equal_the_spec(compose_cfg, tmp_path, dataset_args, n, numel, free, variant):
    """Spec section 6.4: A counted by its N(N-1)/2 skew degrees of freedom (free) and by numel N^2."""
    from helpers import write_tiny_timit
    from rnnrepro.data import build_datamodule
    from rnnrepro.models import build_model, count_parameters
    from rnnrepro.tasks import build_task

    if dataset_args[0] == "dataset=timit":
        write_tiny_timit(tmp_path)
        dataset_args = [*dataset_args, f"data.root={tmp_path}"]
    cfg = compose_cfg(*dataset_args, "model=momentum_dtriv", f"model.variant={variant}", f"model.hidden_size={n}",
                      "model.mu=0.3")
    data = build_datamodule(cfg.data, 0)
    data.setup()
    got_numel, got_free = count_parameters(build_model(cfg.model, data.spec, build_task(data.spec.task)))
    assert got_free == free and (numel is None or got_numel == numel)


def test_resume_equals_uninterrupted_run_through_rebases(compose_cfg, tmp_path, monkeypatch):
    """The rebase counters and base are checkpointed: a run killed between rebases resumes to the same weights."""
    common = ["model=momentum_dtriv", "dataset=pmnist", "model.rebase_every=2", "model.project_every=2",
              "model.orth_lr=1e-2", "optimizer=rmsprop", "trainer.max_epochs=3", "trainer.max_steps=null",
              "trainer.deterministic=true", "data.batch_size=32", "trainer.limit_eval_batches=null"]
    reference = run(compose_cfg(*common, output_dir=tmp_path / "ref"))
    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        crash_after(patch, 5)
        with pytest.raises(KeyboardInterrupt):
            run(compose_cfg(*common, output_dir=out))
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    resumed = run(compose_cfg(*common, "resume=auto", output_dir=out))
    assert resumed["steps"] == reference["steps"] == 9
    for key in ("best_val", "test_at_best_val", "test_last"):
        assert resumed[key] == reference[key], key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ref" / "metrics.csv").drop(columns="wall_time_s"),
                                  pd.read_csv(out / "metrics.csv").drop(columns="wall_time_s"))
    ref_state = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    res_state = torch.load(out / "last.pt", weights_only=False)["model"]
    assert int(ref_state["cell.rebases"]) == 1 + 9 // 2
    for name in ref_state:
        assert torch.equal(ref_state[name], res_state[name]), name
