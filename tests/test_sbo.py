"""SBO-RNN (Zhang et al., NeurIPS 2021): the cell implements B0-B5 of shared/papers/sbo_rnn.md.

Tests follow section 9 of that spec: the lower-level gradient (B0') against autograd and finite differences, the
element-wise and dense forms, the solver reductions (SGD, SHB, SNAG), descent, the recurrent training switch,
parameter counts, the one-step Jacobian, and the SNAG output. The references are written in column form from the
equations; the cell works on row vectors.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from helpers import assert_fused_matches_runner_float32, backward_node_counts
from rnnrepro.cells.sbo import SBORNN, SBOConfig, SBOSequence, _sbo_forward
from rnnrepro.config import ConfigError, validate
from rnnrepro.data.base import DataSpec
from rnnrepro.models import build_model, count_parameters
from rnnrepro.tasks import TaskType, build_task

DT = torch.float64
RECURRENT = ["dense_lowrank", "sparse", "full", "diagonal"]
SOLVERS = ["sgd", "shb", "snag"]


def make_cell(recurrent: str = "dense_lowrank", solver: str = "sgd", m: int = 3, n: int = 12, seed: int = 0,
              **kwargs) -> SBORNN:
    """A float64 cell whose recurrent matrix is generic: the sparse w and diagonal d start at 0 (as the official
    code), which would make U h vanish, so they get random non-zero values; the full U is made non-symmetric."""
    kwargs.setdefault("rank", 4)
    torch.manual_seed(seed)
    cell = SBORNN(m, n, solver=solver, recurrent=recurrent, **kwargs).to(DT)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        if recurrent == "sparse":
            cell.w.fill_(0.8)
        elif recurrent == "diagonal":
            cell.d.copy_(torch.randn(n, generator=g, dtype=DT))
        elif recurrent == "full":
            cell.U.add_(0.5 * torch.randn(n, n, generator=g, dtype=DT))
        elif recurrent == "dense_lowrank":
            cell.P.mul_(3.0)
    return cell


def column_U(cell: SBORNN) -> torch.Tensor:
    """U (n x n) in the column convention of the spec, built from the stored factors."""
    n = cell.hidden_size
    if cell.recurrent == "dense_lowrank":
        return torch.eye(n, dtype=DT) + cell.P @ cell.Q
    if cell.recurrent == "sparse":
        return cell.w * torch.eye(n, dtype=DT)
    if cell.recurrent == "diagonal":
        return torch.diag(cell.d)
    return cell.U


def ref_grad(cell: SBORNN, h: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """B0' for one sample in column form: (alpha I - U^T D)(alpha h - phi), phi = relu(U h + W x + b)."""
    U = column_U(cell)
    n = cell.hidden_size
    a = cell.alpha
    phi = torch.relu(U @ h + gx)
    D = torch.diag((phi > 0).to(DT))
    return (a * torch.eye(n, dtype=DT) - U.t() @ D) @ (a * h - phi)


def kink_margin(cell: SBORNN, h: torch.Tensor, gx: torch.Tensor) -> float:
    """Distance of the ReLU pre-activations U h + W x + b from 0 (rows are samples)."""
    return (h @ column_U(cell).t() + gx).abs().min().item()


def rand_point(cell: SBORNN, B: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, cell.hidden_size, dtype=DT, generator=g)
    x = torch.randn(B, cell.input_size, dtype=DT, generator=g)
    gx = cell.project_inputs(x[None])[0].detach()
    return h, gx


# --- 1. lower-level gradient ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad_impl", ["elementwise", "dense_diag"])
@pytest.mark.parametrize("recurrent", RECURRENT)
def test_lower_level_grad_autograd_and_finite_differences(recurrent, grad_impl):
    cell = make_cell(recurrent, grad_impl=grad_impl, alpha=1.3)
    h, gx = rand_point(cell, B=5, seed=1)
    with torch.no_grad():
        assert kink_margin(cell, h, gx) > 1e-4
        ctx = cell.prepare()
        grad = cell.lower_level_grad(h, gx, ctx)
    assert grad.shape == h.shape
    hh = h.clone().requires_grad_()
    (auto,) = torch.autograd.grad(cell.lower_level_objective(hh, gx).sum(), hh)
    assert (grad - auto).abs().max().item() < 1e-12
    delta = 1e-6
    fd = torch.empty_like(h)
    with torch.no_grad():
        for i in range(cell.hidden_size):
            e = torch.zeros_like(h)
            e[:, i] = delta
            fd[:, i] = (cell.lower_level_objective(h + e, gx) - cell.lower_level_objective(h - e, gx)) / (2 * delta)
    assert (grad - fd).abs().max().item() < 1e-7
    # and the column-form formula of the spec, one sample at a time
    for s in range(h.shape[0]):
        assert torch.allclose(grad[s], ref_grad(cell, h[s], gx[s]).detach(), atol=1e-12, rtol=0)
    assert grad.abs().max().item() > 0.1  # not a trivial point
    # The objective itself is f_t = 1/2 ||alpha h - relu(U h + W x + b)||^2.
    U = column_U(cell).detach()
    f_ref = 0.5 * (1.3 * h - torch.relu(h @ U.t() + gx)).pow(2).sum(1)
    assert torch.allclose(cell.lower_level_objective(h, gx).detach(), f_ref, atol=1e-12, rtol=0)


# --- 2. element-wise == dense form ----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("recurrent", RECURRENT)
def test_elementwise_equals_dense_diag(recurrent, solver):
    cells = {}
    for impl in ("elementwise", "dense_diag"):
        cells[impl] = make_cell(recurrent, solver, grad_impl=impl, eta=0.2, mu=0.6)
    cells["dense_diag"].load_state_dict(cells["elementwise"].state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 3, dtype=DT, generator=g)
    weights = torch.randn(6, 3, 12, dtype=DT, generator=g)
    results = {}
    for impl, cell in cells.items():
        seq, state = cell(x, return_sequence=True)
        (seq * weights).sum().backward()
        grads = {k: p.grad.clone() for k, p in cell.named_parameters() if p.grad is not None}
        results[impl] = (seq.detach(), [s.detach() for s in state], grads)
    (s1, st1, g1), (s2, st2, g2) = results["elementwise"], results["dense_diag"]
    assert torch.allclose(s1, s2, atol=1e-13, rtol=0)
    for a, b in zip(st1, st2):
        assert torch.allclose(a, b, atol=1e-13, rtol=0)
    assert g1.keys() == g2.keys() and len(g1) >= 3
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-11, rtol=0), k
    assert s1.abs().max().item() > 1e-2  # the states moved


# --- 3. solver reductions ------------------------------------------------------------------------------------------
def _run(cell: SBORNN, x: torch.Tensor):
    with torch.no_grad():
        return cell(x, return_sequence=True)


@pytest.mark.parametrize("recurrent", RECURRENT)
def test_mu_zero_momentum_solvers_equal_sgd_exactly(recurrent):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, 3, dtype=DT, generator=g)
    seqs = {}
    for solver in SOLVERS:
        cell = make_cell(recurrent, solver, eta=0.3, mu=0.0)
        seqs[solver], _ = _run(cell, x)
    assert seqs["sgd"].abs().max().item() > 1e-2
    assert torch.equal(seqs["shb"], seqs["sgd"])
    assert torch.equal(seqs["snag"], seqs["sgd"])


def _reference_trajectory(cell: SBORNN, x: torch.Tensor, solver: str) -> torch.Tensor:
    """B3-B5 in column form, one sample at a time, with h_0 = 0 (and h_{-1} = 0, y_0 = 0)."""
    T, B, _ = x.shape
    n, eta, mu = cell.hidden_size, cell.eta, cell.mu.item()
    gx_all = cell.project_inputs(x).detach()
    out = torch.empty(T, B, n, dtype=DT)
    for s in range(B):
        h_prev, h = torch.zeros(n, dtype=DT), torch.zeros(n, dtype=DT)
        y = torch.zeros(n, dtype=DT)
        for t in range(T):
            grad = ref_grad(cell, h, gx_all[t, s]).detach()
            if solver == "sgd":
                h_new = h - eta * grad
            elif solver == "shb":  # the two-step form of heavy ball
                h_new = h - eta * grad + mu * (h - h_prev)
            else:
                y_new = h - eta * grad
                h_new = y_new + mu * (y_new - y)
                y = y_new
            h_prev, h = h, h_new
            out[t, s] = h
    return out


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("recurrent", ["dense_lowrank", "full"])
def test_solvers_match_column_form_reference(recurrent, solver):
    cell = make_cell(recurrent, solver, eta=0.2, mu=0.7)
    x = torch.randn(10, 3, 3, dtype=DT, generator=torch.Generator().manual_seed(4))
    seq, _ = _run(cell, x)
    ref = _reference_trajectory(cell, x, solver)
    assert torch.allclose(seq, ref, atol=1e-12, rtol=0)
    if solver != "sgd":  # the momentum term matters at these settings
        sgd = _reference_trajectory(make_cell(recurrent, "sgd", eta=0.2, mu=0.7), x, "sgd")
        assert (seq - sgd).abs().max().item() > 1e-2


def test_shb_velocity_state():
    cell = make_cell("dense_lowrank", "shb", eta=0.2, mu=0.7)
    x = torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    seq, (h, v) = _run(cell, x)
    assert torch.allclose(v, seq[-1] - seq[-2], atol=1e-15, rtol=0)  # v_t = h_t - h_{t-1}


# --- 4. descent ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recurrent", RECURRENT)
def test_one_sgd_step_decreases_the_lower_level_objective(recurrent):
    eta = 1e-4
    cell = make_cell(recurrent, "sgd", eta=eta, n=16)
    h, gx = rand_point(cell, B=8, seed=6)
    with torch.no_grad():
        assert kink_margin(cell, h, gx) > 1e-3
        ctx = cell.prepare()
        (h1,) = cell.step(gx, (h,), ctx)
        f0 = cell.lower_level_objective(h, gx)
        f1 = cell.lower_level_objective(h1, gx)
        g = cell.lower_level_grad(h, gx, ctx)
    assert (f1 <= f0).all()
    # first order: f(h - eta g) = f(h) - eta ||g||^2 + O(eta^2)
    ratio = (f0 - f1) / (eta * g.pow(2).sum(1))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.05, rtol=0)


# --- 5. recurrent training switch ----------------------------------------------------------------------------------
RECURRENT_TENSORS = {"dense_lowrank": ("P", "Q"), "sparse": ("w",), "full": ("U",), "diagonal": ("d",)}


def _adam_steps(cell: SBORNN, steps: int = 2) -> None:
    opt = torch.optim.Adam(cell.parameters(), lr=1e-2)
    x = torch.randn(6, 4, 3, dtype=DT, generator=torch.Generator().manual_seed(7))
    for _ in range(steps):
        opt.zero_grad()
        out, _ = cell(x)
        out.pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize("recurrent", RECURRENT)
def test_train_recurrent_true_trains_U(recurrent):
    cell = make_cell(recurrent, "shb", eta=0.1, train_recurrent=True)
    names = RECURRENT_TENSORS[recurrent]
    params = dict(cell.named_parameters())
    before = {k: params[k].detach().clone() for k in names}
    assert not set(names) & {k for k, _ in cell.named_buffers()}
    _adam_steps(cell)
    for k in names:
        assert params[k].grad is not None and params[k].grad.abs().max() > 0
        assert not torch.equal(params[k].detach(), before[k]), k


@pytest.mark.parametrize("recurrent", [r for r in RECURRENT if r != "dense_lowrank"])
def test_train_recurrent_false_is_refused_outside_dense_lowrank(recurrent, compose_cfg):
    """The official code freezes only the dense P, Q; it trains the sparse w (spec section 7 item 1)."""
    with pytest.raises(ValueError, match="dense_lowrank only"):
        make_cell(recurrent, "shb", train_recurrent=False)
    with pytest.raises(ConfigError, match=r"^model\.train_recurrent: .*dense_lowrank only"):
        validate(compose_cfg(f"model.recurrent={recurrent}", "model.train_recurrent=false"))
    validate(compose_cfg("model.recurrent=dense_lowrank", "model.train_recurrent=false"))


@pytest.mark.parametrize("recurrent", ["dense_lowrank"])
def test_train_recurrent_false_freezes_U_bitwise(recurrent):
    cell = make_cell(recurrent, "shb", eta=0.1, train_recurrent=False)
    names = RECURRENT_TENSORS[recurrent]
    buffers = dict(cell.named_buffers())
    assert set(names) <= set(buffers)
    assert not set(names) & {k for k, _ in cell.named_parameters()}
    before = {k: buffers[k].clone() for k in names}
    others = {k: p.detach().clone() for k, p in cell.named_parameters()}
    _adam_steps(cell)
    for k in names:
        assert torch.equal(buffers[k], before[k]), k
        assert not buffers[k].requires_grad
    moved = [k for k, p in cell.named_parameters() if not torch.equal(p.detach(), others[k])]
    assert "input.weight" in moved and "mu" in moved  # the rest of the model did train
    assert set(names) <= set(cell.state_dict())  # the frozen U is still saved with checkpoints


# --- 6. parameter counts -------------------------------------------------------------------------------------------
def _counts(m: int = 1, **kwargs) -> tuple[int, int]:
    spec = DataSpec(input_size=m, output_size=10, task=TaskType.classify_last)
    cfg = OmegaConf.structured(SBOConfig(hidden_size=128, **kwargs))
    return count_parameters(build_model(cfg, spec, build_task(spec.task)))


@pytest.mark.parametrize("kwargs,expected", [
    ({}, 14346),  # 2 * 128 * 50 + 128 + 128 + 1290 (the SGD solver has no mu)
    ({"solver": "shb"}, 14347),  # + 1 (mu): the spec's 14.3k
    ({"recurrent": "sparse", "solver": "snag"}, 1548),  # 128 + 128 + 1290 + 1 (w) + 1 (mu)
    ({"train_recurrent": False, "solver": "shb"}, 1547),  # the official code's trainable set: P, Q are not parameters
    ({"learn_mu": False, "solver": "shb"}, 14346),
    ({"recurrent": "full"}, 128 * 128 + 1546),
    ({"recurrent": "diagonal", "solver": "snag"}, 128 + 1547),
])
def test_parameter_counts(kwargs, expected):
    assert _counts(**kwargs) == (expected, expected)


def test_sgd_solver_has_no_mu_parameter():
    """mu is read by SHB and SNAG only: under SGD it is a buffer, out of the optimizer and of params_free."""
    sgd, shb = make_cell("dense_lowrank", "sgd"), make_cell("dense_lowrank", "shb")
    assert "mu" not in dict(sgd.named_parameters()) and "mu" in dict(sgd.named_buffers())
    assert "mu" in dict(shb.named_parameters())
    assert "mu" in sgd.state_dict()  # checkpoints keep it


# --- 7. one-step Jacobian ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recurrent", RECURRENT)
def test_sgd_step_jacobian_is_identity_minus_eta_hessian(recurrent):
    n = 12
    cell = make_cell(recurrent, "sgd", n=n, alpha=1.2, eta=1e-3)
    h, gx = rand_point(cell, B=1, seed=8)
    with torch.no_grad():
        assert kink_margin(cell, h, gx) > 1e-4
    U = column_U(cell).detach()
    phi_pre = U @ h[0] + gx[0]
    D = torch.diag((phi_pre > 0).to(DT))
    eye = torch.eye(n, dtype=DT)
    hess = (1.2 * eye - U.t() @ D) @ (1.2 * eye - D @ U)
    assert 0 < D.trace() < n  # the mask is neither empty nor full

    def one_step(eta):
        cell.eta = eta
        ctx = cell.prepare()
        return torch.autograd.functional.jacobian(lambda v: cell.step(gx, (v[None],), ctx)[0][0], h[0])

    for eta in (1e-3, 1e-2):
        J = one_step(eta)  # J[i, j] = d h_t[i] / d h_{t-1}[j]
        assert torch.allclose(J, eye - eta * hess, atol=1e-13, rtol=0)
        # O(eta): ||J - I|| = eta ||hessian||
        assert abs(torch.linalg.matrix_norm(J - eye, 2).item() - eta * torch.linalg.matrix_norm(hess, 2).item()) \
            < 1e-12
    if recurrent in ("full", "dense_lowrank"):  # U is not symmetric: the transposed formula is a different matrix
        wrong = (1.2 * eye - U @ D) @ (1.2 * eye - D @ U.t())
        assert (wrong - hess).abs().max().item() > 1e-3


# --- 8. SNAG output -------------------------------------------------------------------------------------------------
def test_snag_returns_the_extrapolated_point():
    cell = make_cell("dense_lowrank", "snag", eta=0.2, mu=0.7)
    x = torch.randn(7, 3, 3, dtype=DT, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        last, (h, y) = cell(x)
        seq, _ = cell(x, return_sequence=True)
    assert cell.state_names == ("h", "y")
    assert torch.equal(last, h) and torch.equal(seq[-1], h)
    ref = _reference_trajectory(cell, x, "snag")
    assert torch.allclose(last, ref[-1], atol=1e-12, rtol=0)
    # h_T = y_T + mu (y_T - y_{T-1}) differs from y_T
    assert (last - y).abs().max().item() > 1e-2
    with torch.no_grad():
        _, (_, y_prev) = cell(x[:-1])
    mu = cell.mu.detach()  # 0.7 rounded to float32 at construction, then cast to float64
    assert torch.allclose(last, y + mu * (y - y_prev), atol=1e-14, rtol=0)


# --- 9. fused sequence Function == step-by-step autograd runner -----------------------------------------------------
def _fused_and_runner(recurrent: str, solver: str, **kwargs) -> tuple[SBORNN, SBORNN]:
    kwargs = {"eta": 0.2, "mu": 0.6, "alpha": 1.3, "n": 6, **kwargs}
    fused = make_cell(recurrent, solver, impl="fused", **kwargs)
    runner = make_cell(recurrent, solver, impl="cell", **kwargs)
    runner.load_state_dict(fused.state_dict())
    return fused, runner


def _run_both_ways(cell: SBORNN, x: torch.Tensor, state, w_seq: torch.Tensor, w_fin: list[torch.Tensor]):
    """Outputs, final states and the gradients of every parameter, x and the initial state, for one loss that reads
    the whole sequence, the last output and every final state component."""
    x = x.clone().requires_grad_()
    state = None if state is None else tuple(s.clone().requires_grad_() for s in state)
    seq, st = cell(x, state, return_sequence=True)
    last, st_last = cell(x, state)
    loss = (seq * w_seq).sum() + last.pow(2).sum() + sum((s * w).sum() for s, w in zip(st + st_last, w_fin * 2))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in cell.named_parameters() if p.grad is not None}
    grads["x"] = x.grad
    if state is not None:
        grads.update({f"state{i}": s.grad for i, s in enumerate(state)})
    return seq.detach(), last.detach(), [s.detach() for s in st + st_last], grads


@pytest.mark.parametrize("learn_mu", [True, False])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("recurrent, train_recurrent",
                         [(r, True) for r in RECURRENT] + [("dense_lowrank", False)])  # false: dense_lowrank only
def test_fused_matches_autograd_runner(recurrent, solver, learn_mu, train_recurrent):
    fused, runner = _fused_and_runner(recurrent, solver, learn_mu=learn_mu, train_recurrent=train_recurrent)
    T, B, n = 7, 3, fused.hidden_size
    g = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, 3, dtype=DT, generator=g)
    k = len(fused.state_names)
    w_seq = torch.randn(T, B, n, dtype=DT, generator=g)
    w_fin = [torch.randn(B, n, dtype=DT, generator=g) for _ in range(k)]
    for state in (None, tuple(torch.randn(B, n, dtype=DT, generator=g) for _ in range(k))):
        seq_f, last_f, st_f, g_f = _run_both_ways(fused, x, state, w_seq, w_fin)
        seq_r, last_r, st_r, g_r = _run_both_ways(runner, x, state, w_seq, w_fin)
        assert torch.allclose(seq_f, seq_r, atol=1e-12, rtol=0)
        assert torch.equal(last_f, seq_f[-1])
        assert torch.allclose(last_f, last_r, atol=1e-12, rtol=0)
        for a, b in zip(st_f, st_r):
            assert torch.allclose(a, b, atol=1e-12, rtol=0)
        assert g_f.keys() == g_r.keys()
        expected = {"input.weight", "input.bias", "x"} | ({"mu"} if learn_mu and solver != "sgd" else set()) \
            | (set(RECURRENT_TENSORS[recurrent]) if train_recurrent else set()) \
            | ({f"state{i}" for i in range(k)} if state is not None else set())
        assert set(g_f) == expected
        for name in g_f:
            assert torch.allclose(g_f[name], g_r[name], atol=1e-10, rtol=0), name
            assert g_f[name].abs().max() > 0, name
        assert seq_f.abs().max().item() > 1e-2  # the states moved


@pytest.mark.parametrize("solver", SOLVERS)
def test_fused_graph_is_one_node_and_runner_is_used_for_dense_diag(solver):
    """The fused path records one backward node for the whole sequence (nothing per step); grad_impl=dense_diag and
    impl=cell run the step-by-step runner."""
    def backward_nodes(cell: SBORNN, T: int):
        return backward_node_counts(cell(torch.randn(T, 2, 3, dtype=DT))[0])

    fused = make_cell("dense_lowrank", solver)
    short, long = backward_nodes(fused, 3), backward_nodes(fused, 30)
    assert short == long and short["SBOSequenceBackward"] == 1
    assert "UnbindBackward0" not in long
    for kwargs in ({"impl": "cell"}, {"grad_impl": "dense_diag"}):
        runner = make_cell("dense_lowrank", solver, **kwargs)
        nodes = backward_nodes(runner, 3)
        assert "SBOSequenceBackward" not in nodes and "UnbindBackward0" in nodes
    with pytest.raises(ValueError, match="model.impl"):
        SBORNN(1, 4, impl="cudnn")


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("recurrent", RECURRENT)
def test_fused_no_grad_forward_and_step_agree(recurrent, solver):
    """The forward-only path (no tensors saved) equals the forward of the differentiable path bit for bit, and driving
    step() by hand (what online algorithms do) reproduces it."""
    cell = make_cell(recurrent, solver, eta=0.2, mu=0.6)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 2, 3, dtype=DT, generator=g)
    state = tuple(torch.randn(2, 12, dtype=DT, generator=g) for _ in cell.state_names)
    seq, st = cell(x, state, return_sequence=True)
    assert seq.requires_grad
    with torch.no_grad():
        seq_ng, st_ng = cell(x, state, return_sequence=True)
        last_ng, st_last = cell(x, state)
        ctx = cell.prepare()
        s = state
        for t in range(6):
            s = cell.step(cell.project_inputs(x[t : t + 1])[0], s, ctx)
            assert torch.allclose(cell.output(s), seq_ng[t], atol=1e-12, rtol=0)
    assert torch.equal(seq.detach(), seq_ng) and torch.equal(last_ng, seq_ng[-1])
    for a, b, c in zip(st, st_ng, st_last):
        assert torch.equal(a.detach(), b) and torch.equal(b, c)


@pytest.mark.parametrize("return_sequence", [False, True])
@pytest.mark.parametrize("u_shape", [(3, 3), (3,), ()], ids=["matrix", "diagonal", "scalar"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_fused_function_gradcheck(solver, u_shape, return_sequence):
    """torch.autograd.gradcheck of SBOSequence itself (T=4, B=2, n=3) w.r.t. gx, U (or d, w), mu and the initial
    state, at a point away from the ReLU kinks."""
    g = torch.Generator().manual_seed(13)
    T, B, n = 4, 2, 3

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=DT, generator=g)).requires_grad_()

    gx, h0 = rand(T, B, n), rand(B, n)
    u = rand(*u_shape, scale=0.7) if u_shape else torch.tensor(0.8, dtype=DT, requires_grad=True)
    mu = torch.tensor(0.6, dtype=DT, requires_grad=True)
    m0 = rand(B, n) if solver != "sgd" else None

    def f(gx, u, mu, h0, m0):
        return SBOSequence.apply(gx, u, mu, h0, m0, solver, 1.3, 0.3, return_sequence)

    inputs = (gx, u, mu, h0, m0)
    with torch.no_grad():  # every ReLU pre-activation along the trajectory is away from 0
        run = _sbo_forward(gx, u, 0.6, h0, m0, solver, 1.3, 0.3, keep_seq=True, save=False, save_momentum=False,
                           save_dne=False)
        U = u if u.dim() == 2 else torch.diag(u.expand(n))
        pre = gx + run["hs"][:T] @ U.t()
        assert pre.abs().min() > 1e-3 and (pre > 0).any() and (pre < 0).any()
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_fused_float32_matches_runner(solver):
    """The default dtype: the fused path agrees with the runner to float32 rounding (T=50)."""
    torch.manual_seed(0)
    cells = [SBORNN(2, 16, solver=solver, rank=5, eta=0.05, impl=impl) for impl in ("fused", "cell")]
    cells[1].load_state_dict(cells[0].state_dict())
    x = torch.randn(50, 4, 2, generator=torch.Generator().manual_seed(1))
    assert_fused_matches_runner_float32(cells, x)


@pytest.mark.parametrize("solver", SOLVERS)
def test_fused_backward_twice_with_retain_graph(solver):
    """The hand-written backward leaves the saved tensors untouched: a second backward gives the same gradients."""
    cell = make_cell("dense_lowrank", solver, eta=0.2)
    seq, state = cell(torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(14)), return_sequence=True)
    loss = seq.pow(2).sum() + state[-1].sum()
    params = list(cell.parameters())
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
