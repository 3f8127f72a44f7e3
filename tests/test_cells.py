"""Baseline cells (tanh RNN, iRNN, GRU, LSTM), the shared step-by-step runner, and the sequence model's head shapes.

- ``impl="fused"`` (nn.RNN / nn.GRU / nn.LSTM) and ``impl="cell"`` (the shared runner) compute the same function and
  the same parameter gradients.
- Initialisations: iRNN identity recurrence and zero biases; LSTM forget-gate bias.
- The runner projects the inputs once per forward and never indexes the projected tensor per step (which would make
  backward quadratic in T, see rnnrepro/cells/base.py).
- SequenceModel returns (B, C) for classify_last and (B, T, C) for per-step tasks.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from helpers import backward_node_counts
from rnnrepro.cells.antisymmetric import AntisymConfig, AntisymmetricRNN
from rnnrepro.cells.base import RecurrentCell
from rnnrepro.cells.classic import GRU, IRNN, LSTM, GRUConfig, LSTMConfig, TanhRNN
from rnnrepro.cells.sbo import SBORNN, SBOConfig
from rnnrepro.data.base import DataSpec
from rnnrepro.models import SequenceModel, build_model, count_parameters
from rnnrepro.tasks import TaskType, build_task

DT = torch.float64
BASELINES = {"rnn": TanhRNN, "irnn": IRNN, "gru": GRU, "lstm": LSTM}


def pair(name: str, m: int = 4, n: int = 6, seed: int = 0) -> tuple[RecurrentCell, RecurrentCell]:
    """The same parameters behind impl=fused and impl=cell, in float64."""
    torch.manual_seed(seed)
    fused = BASELINES[name](m, n, impl="fused").to(DT)
    if name == "irnn":  # identity recurrence and zero biases at init: perturb so every term is exercised
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in fused.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=DT))
    cell = BASELINES[name](m, n, impl="cell").to(DT)
    cell.load_state_dict(fused.state_dict())
    return fused, cell


def initial_state(name: str, B: int, n: int, g: torch.Generator):
    k = 2 if name == "lstm" else 1
    return tuple(torch.randn(B, n, dtype=DT, generator=g) for _ in range(k))


# --- 1. fused == cell ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_fused_and_cell_paths_agree(name, with_state):
    T, B, m, n = 9, 3, 4, 6
    fused, cell = pair(name, m, n)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(T, B, m, dtype=DT, generator=g)
    state = initial_state(name, B, n, g) if with_state else None
    w_seq = torch.randn(T, B, n, dtype=DT, generator=g)
    w_fin = [torch.randn(B, n, dtype=DT, generator=g) for _ in range(2)]
    results = []
    for c in (fused, cell):
        x_c = x.clone().requires_grad_()
        seq, st = c(x_c, state, return_sequence=True)
        last, st_last = c(x_c, state)
        assert seq.shape == (T, B, n) and last.shape == (B, n)
        assert len(st) == len(c.state_names) and all(s.shape == (B, n) for s in st)
        loss = (seq * w_seq).sum() + sum((s * w).sum() for s, w in zip(st, w_fin)) + last.pow(2).sum()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in c.named_parameters()}
        results.append((seq.detach(), last.detach(), [s.detach() for s in st], grads, x_c.grad))
        assert torch.equal(last, seq[-1]) and all(torch.equal(a, b) for a, b in zip(st, st_last))
    (s1, l1, st1, g1, gx1), (s2, l2, st2, g2, gx2) = results
    assert torch.allclose(s1, s2, atol=1e-12, rtol=0)
    assert torch.allclose(l1, l2, atol=1e-12, rtol=0)
    for a, b in zip(st1, st2):  # final (h, c) for the LSTM
        assert torch.allclose(a, b, atol=1e-12, rtol=0)
    assert g1.keys() == g2.keys() and len(g1) == 4
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-10, rtol=0), k
        assert g1[k].abs().max() > 0, k
    assert torch.allclose(gx1, gx2, atol=1e-10, rtol=0)
    if with_state:  # the initial state is really used
        s0, _ = cell(x, return_sequence=True)
        assert (s0 - s2).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_step_by_step_equals_fused_module(name):
    """Driving ``step`` directly (what online algorithms do) reproduces the fused module."""
    fused, cell = pair(name)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, dtype=DT, generator=g)
    state = initial_state(name, 2, 6, g)
    with torch.no_grad():
        ref, _ = fused(x, state, return_sequence=True)
        ctx = cell.prepare()
        for t in range(5):
            state = cell.step(cell.project_inputs(x[t : t + 1])[0], state, ctx)
            assert torch.allclose(cell.output(state), ref[t], atol=1e-12, rtol=0)


# --- 2. initialisations --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_irnn_init_identity_and_zero_biases(scale):
    torch.manual_seed(0)
    c = IRNN(3, 16, identity_scale=scale)
    assert torch.equal(c.w_hh, scale * torch.eye(16))
    assert torch.count_nonzero(c.rnn.bias_ih_l0) == 0 and torch.count_nonzero(c.rnn.bias_hh_l0) == 0
    assert c.w_ih.abs().max() > 0  # the input weights keep a random init
    assert c.rnn.nonlinearity == "relu"
    # with zero input the state is just scaled: relu(scale * h)
    h0 = torch.rand(2, 16)
    out, _ = c(torch.zeros(4, 2, 3), (h0,))
    assert torch.allclose(out, scale**4 * h0, atol=1e-6)


@pytest.mark.parametrize("forget_bias", [1.0, 2.5, 0.0])
def test_lstm_forget_gate_bias(forget_bias):
    n = 16
    torch.manual_seed(0)
    c = LSTM(3, n, forget_bias=forget_bias)
    b = c.rnn.bias_ih_l0 + c.rnn.bias_hh_l0  # gate order i, f, g, o
    assert torch.equal(b[n : 2 * n], torch.full((n,), forget_bias))
    # the other gates keep PyTorch's random init (their sums are not forget_bias)
    assert (b[:n] != forget_bias).all() and (b[3 * n :] != forget_bias).all()
    # and the runner's projection uses the summed bias
    gx = c.project_inputs(torch.zeros(1, 1, 3))[0, 0]
    assert torch.allclose(gx, b.detach())


def test_redundant_bias_counts():
    n, m = 8, 3
    assert TanhRNN(m, n).redundant_parameters() == n
    assert GRU(m, n).redundant_parameters() == 2 * n
    assert LSTM(m, n).redundant_parameters() == 4 * n
    spec = DataSpec(input_size=m, output_size=5, task=TaskType.classify_last)
    task = build_task(spec.task)
    numel, free = count_parameters(build_model(OmegaConf.structured(GRUConfig(hidden_size=n)), spec, task))
    assert numel == 3 * (n * m + n * n + 2 * n) + n * 5 + 5 and free == numel - 2 * n


# --- 3. the shared runner ------------------------------------------------------------------------------------------
def runner_cells() -> dict[str, RecurrentCell]:
    torch.manual_seed(0)
    return {
        # SBO-RNN and AntisymmetricRNN default to their fused sequence Functions; impl="cell" selects the runner.
        "antisym": AntisymmetricRNN(3, 6, gated=True, eps=0.2, impl="cell"),
        "sbo_snag": SBORNN(3, 6, solver="snag", rank=2, eta=0.3, impl="cell"),
        "sbo_shb": SBORNN(3, 6, solver="shb", recurrent="sparse", eta=0.3, impl="cell"),
        "rnn": TanhRNN(3, 6, impl="cell"),
        "irnn": IRNN(3, 6, impl="cell"),
        "gru": GRU(3, 6, impl="cell"),
        "lstm": LSTM(3, 6, impl="cell"),
    }


@pytest.mark.parametrize("name", list(runner_cells()))
def test_runner_projects_once_and_stacks_steps(name, monkeypatch):
    cell = runner_cells()[name].to(DT)
    calls = {"project_inputs": 0, "prepare": 0, "step": 0}
    for method in calls:
        original = getattr(cell, method)

        def counted(*args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(cell, method, counted)
    T, B = 11, 2
    g = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, 3, dtype=DT, generator=g)
    seq, state = cell(x, return_sequence=True)
    assert calls == {"project_inputs": 1, "prepare": 1, "step": T}
    assert seq.shape == (T, B, 6)

    # per-step reference, driving step() by hand with a fresh projection of every single time step
    with torch.no_grad():
        st = cell.init_state(B, x)
        ctx = cell.prepare()
        outs = []
        for t in range(T):
            st = cell.step(cell.project_inputs(x[t : t + 1])[0], st, ctx)
            outs.append(cell.output(st))
    assert torch.allclose(seq.detach(), torch.stack(outs), atol=1e-14, rtol=0)
    for a, b in zip(state, st):
        assert torch.allclose(a.detach(), b, atol=1e-14, rtol=0)
    last, _ = cell(x)
    assert torch.equal(last, seq[-1])

    # The backward graph reads the projected inputs through one unbind; no per-step select of a (T, B, k) tensor.
    nodes = backward_node_counts(seq)
    assert nodes.get("UnbindBackward0") == 1
    assert not {"SelectBackward0", "IndexBackward0", "SliceBackward0"} & set(nodes), nodes
    seq.sum().backward()
    assert all(p.grad is not None for p in cell.parameters() if p.requires_grad and p.dim() > 0)


def test_runner_gradient_matches_finite_differences():
    """Backward through the runner (unbind views) is the exact gradient: check d loss / d x against FD."""
    torch.manual_seed(0)
    cell = AntisymmetricRNN(2, 4, eps=0.5, sigma_w=2.0, impl="cell").to(DT)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 2, dtype=DT, generator=g)
    w = torch.randn(6, 2, 4, dtype=DT, generator=g)

    def loss(inp):
        return (cell(inp, return_sequence=True)[0] * w).sum()

    assert torch.autograd.gradcheck(loss, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-8)


# --- 4. head shapes ------------------------------------------------------------------------------------------------
MODEL_CFGS = {"antisym": AntisymConfig(hidden_size=8), "sbo": SBOConfig(hidden_size=8, rank=3),
              "lstm": LSTMConfig(hidden_size=8), "lstm_cell": LSTMConfig(hidden_size=8, impl="cell")}


@pytest.mark.parametrize("name", sorted(MODEL_CFGS))
def test_sequence_model_output_shapes(name):
    B, T, m, C = 5, 7, 3, 4
    cfg = OmegaConf.structured(MODEL_CFGS[name])
    torch.manual_seed(0)
    spec_last = DataSpec(input_size=m, output_size=C, task=TaskType.classify_last)
    model = build_model(cfg, spec_last, build_task(spec_last.task))
    assert isinstance(model, SequenceModel)
    x = torch.randn(B, T, m)  # batch-major in, the cell runs time-major
    out_last, _ = model(x)
    assert out_last.shape == (B, C)

    each = SequenceModel(model.cell, model.head, build_task(TaskType.classify_each))
    out_each, _ = each(x)
    assert out_each.shape == (B, T, C)
    # the per-step head reads every state; its last step is the classify_last output
    assert torch.allclose(out_each[:, -1], out_last, atol=1e-6)
    seq, _ = model.cell(x.transpose(0, 1), return_sequence=True)
    assert torch.allclose(out_each, model.head(seq).transpose(0, 1), atol=1e-6)
    # each batch element is processed independently
    out_one, _ = model(x[2:3])
    assert torch.allclose(out_one, out_last[2:3], atol=1e-5)


def test_sequence_model_token_inputs_and_per_step_head():
    B, T, V, E, C = 3, 6, 11, 5, 11
    spec = DataSpec(input_size=E, output_size=C, task=TaskType.classify_each, vocab_size=V)
    torch.manual_seed(0)
    model = build_model(OmegaConf.structured(GRUConfig(hidden_size=8)), spec, build_task(spec.task))
    assert isinstance(model.encoder, torch.nn.Embedding) and model.encoder.weight.shape == (V, E)
    out, state = model(torch.randint(0, V, (B, T)))
    assert out.shape == (B, T, C) and state[0].shape == (B, 8)
