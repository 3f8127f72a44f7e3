"""AntisymmetricRNN (Chang et al., ICLR 2019): the cell implements Eq. 12 / Eq. 13 of the paper.

Each test is one item of shared/papers/antisymmetric_rnn.md section 9 (spectrum, antisymmetry, Proposition 2, the
section 4 toy dynamics, the shared gate matrix, parameter counts, the step bound, initialisation statistics) plus a
naive column-form reference of Eq. 12 / Eq. 13 written from the equations.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from helpers import assert_fused_matches_runner_float32, backward_node_counts
from rnnrepro import native
from rnnrepro.cells.antisymmetric import AntisymConfig, AntisymmetricRNN, AntisymSequence
from rnnrepro.cells.classic import LSTMConfig
from rnnrepro.data.base import DataSpec
from rnnrepro.models import build_model, count_parameters
from rnnrepro.tasks import TaskType, build_task

DT = torch.float64
# (param, init_on): triu storage, and a full free W (community code) whose W - W^T is built at every call.
STORAGES = [("triu", "antisym"), ("full", "free_W")]


def make_cell(m: int = 3, n: int = 16, seed: int = 0, **kwargs) -> AntisymmetricRNN:
    torch.manual_seed(seed)
    return AntisymmetricRNN(m, n, **kwargs).to(DT)


def randomise(cell: AntisymmetricRNN, seed: int = 1) -> None:
    """Random non-zero values in every parameter, biases included (the paper initialises biases to 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)


def free_W(cell: AntisymmetricRNN) -> torch.Tensor:
    """The stored W as an n x n matrix, built independently of the cell's own assembly code."""
    n = cell.hidden_size
    if cell.param == "full":
        return cell.w_full
    W = torch.zeros(n, n, dtype=DT)
    k = 0
    for i in range(n):  # row-major strictly-upper triangle, the order of torch.triu_indices
        for j in range(i + 1, n):
            W = W.index_put((torch.tensor(i), torch.tensor(j)), cell.w_triu[k])
            k += 1
    return W


# --- 1. spectrum ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param,init_on", STORAGES)
def test_spectrum_real_parts(param, init_on):
    gamma = 0.137
    cell = make_cell(n=24, gamma=gamma, sigma_w=3.0, param=param, init_on=init_on)
    randomise(cell)
    A = cell.antisymmetric_part().detach()
    M = cell.recurrent_matrix().detach()
    assert torch.equal(A, (free_W(cell) - free_W(cell).t()).detach())  # it is W - W^T of the stored W
    ev_a = torch.linalg.eigvals(A)
    ev_m = torch.linalg.eigvals(M)
    scale = torch.linalg.matrix_norm(A, 2).item()
    assert scale > 1.0  # a non-trivial matrix
    assert ev_a.real.abs().max().item() < 1e-10 * scale
    assert (ev_m.real + gamma).abs().max().item() < 1e-10 * scale
    # The imaginary parts are untouched by the diffusion and not all zero.
    assert ev_m.imag.abs().max().item() > 0.5
    assert torch.allclose(ev_a.imag.abs().sort().values, ev_m.imag.abs().sort().values, atol=1e-10)


# --- 2. antisymmetry of the built matrix ---------------------------------------------------------------------------
@pytest.mark.parametrize("param,init_on", STORAGES)
def test_M_plus_MT_is_minus_two_gamma_identity(param, init_on):
    gamma = 0.3
    cell = make_cell(n=20, gamma=gamma, sigma_w=2.0, param=param, init_on=init_on)
    randomise(cell)
    M = cell.recurrent_matrix().detach()
    expected = -2 * gamma * torch.eye(20, dtype=DT)
    assert torch.equal(M + M.t(), expected)  # exact: fl(a - b) == -fl(b - a)
    assert torch.equal(torch.diagonal(M), torch.full((20,), -gamma, dtype=DT))
    # The runner multiplies row vectors by M^T: prepare() must return exactly that.
    assert torch.equal(cell.prepare().detach(), M.t())


# --- 3. Proposition 2 and the stability boundary -------------------------------------------------------------------
def test_proposition2_forward_euler_without_diffusion_is_unstable():
    cell = make_cell(n=16, gamma=0.0, sigma_w=2.0)
    lam = torch.linalg.eigvals(cell.recurrent_matrix().detach())
    assert lam.real.abs().max().item() < 1e-12  # purely imaginary
    nonzero = lam[lam.imag.abs() > 1e-8]
    assert len(nonzero) >= 14
    for eps in (1e-3, 0.01, 0.1, 1.0):
        amp = (1 + eps * nonzero).abs()
        assert (amp > 1).all()  # |1 + eps i w| = sqrt(1 + eps^2 w^2) > 1
        assert torch.allclose(amp, torch.sqrt(1 + eps**2 * nonzero.imag**2))
    # The linear forward-Euler map I + eps M then grows the state, whatever eps.
    M = cell.recurrent_matrix().detach()
    rho = torch.linalg.eigvals(torch.eye(16, dtype=DT) + 0.01 * M).abs().max().item()
    assert rho > 1.0


@pytest.mark.parametrize("omega", [0.05, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("gamma", [0.001, 0.01, 0.1, 1.0])
def test_diffusion_stability_boundary_scalar(gamma, omega):
    """|1 + eps (i w - gamma)| < 1 exactly when eps < 2 gamma / (gamma^2 + w^2); both sides of the boundary."""
    lam = complex(-gamma, omega)
    crit = 2 * gamma / (gamma**2 + omega**2)
    for f in (0.5, 0.99, 0.999):
        assert abs(1 + f * crit * lam) < 1
    for f in (1.001, 1.01, 2.0):
        assert abs(1 + f * crit * lam) > 1
    assert abs(abs(1 + crit * lam) - 1) < 1e-12  # on the boundary the modulus is 1


def test_diffusion_stability_boundary_of_the_cell_matrix():
    """The spectral radius of the Euler map I + eps M crosses 1 at eps = 2 gamma / (gamma^2 + w_max^2)."""
    gamma, n = 0.1, 16
    cell = make_cell(n=n, gamma=gamma, sigma_w=2.0)
    M = cell.recurrent_matrix().detach()
    lam = torch.linalg.eigvals(M)
    w_max = lam.imag.abs().max().item()
    crit = 2 * gamma / (gamma**2 + w_max**2)
    eye = torch.eye(n, dtype=DT)
    for f, stable in ((0.9, True), (0.99, True), (1.01, False), (1.1, False)):
        rho = torch.linalg.eigvals(eye + f * crit * M).abs().max().item()
        assert (rho < 1) == stable, (f, rho)
    # Every eigenvalue of M satisfies the per-eigenvalue criterion at eps = 0.9 crit.
    eps = 0.9 * crit
    assert ((1 + eps * lam).abs() < 1).all()
    assert (eps < 2 * gamma / (gamma**2 + lam.imag**2)).all()
    # Dynamics of the linearised model: decays below the boundary, grows above it.
    h0 = torch.randn(n, dtype=DT, generator=torch.Generator().manual_seed(0))
    for f, shrinks in ((0.9, True), (1.1, False)):
        h = torch.linalg.matrix_power(eye + f * crit * M, 20000) @ h0
        assert (h.norm() < 0.5 * h0.norm()) if shrinks else (h.norm() > 2 * h0.norm())


# --- 4. section 4 toy dynamics (A6) --------------------------------------------------------------------------------
TOY_H0 = [(0.0, 0.5), (-0.5, -0.5), (0.5, -0.75)]
# (matrix entry W[0, 1] of the antisymmetric part, gamma, expected radius ratios at T = 50 [derived: spec section 9])
TOY_CASES = {"W0": (-2.0, 0.0, (1.58, 1.44, 1.32)), "W_diff": (-2.0, 0.15, (1.04, 1.01, 0.93))}


@pytest.mark.parametrize("name", sorted(TOY_CASES))
def test_section4_toy_feedback_dynamics(name):
    w01, gamma, expected = TOY_CASES[name]
    cell = make_cell(m=1, n=2, eps=0.1, gamma=gamma)
    with torch.no_grad():
        cell.w_triu.fill_(w01)  # W - W^T = [[0, -2], [2, 0]]
        cell.input_weight.zero_()
        cell.input_bias.zero_()
    W = cell.recurrent_matrix().detach()
    W_paper = torch.tensor([[-gamma, -2.0], [2.0, -gamma]], dtype=DT)
    assert torch.equal(W, W_paper)  # W0 (gamma = 0) and W_diff (gamma = 0.15) of the paper
    h0 = torch.tensor(TOY_H0, dtype=DT)  # three initial states as a batch
    x = torch.zeros(50, 3, 1, dtype=DT)
    with torch.no_grad():
        seq, _ = cell(x, state=(h0,), return_sequence=True)
    # Reference: the paper's feedback model h_t = h_{t-1} + eps tanh(W h_{t-1}), one initial state at a time.
    for b, start in enumerate(TOY_H0):
        h = torch.tensor(start, dtype=DT)
        for t in range(50):
            h = h + 0.1 * torch.tanh(W_paper @ h)
            assert torch.allclose(seq[t, b], h, atol=1e-14, rtol=0)
    ratio = seq[-1].norm(dim=1) / h0.norm(dim=1)
    assert torch.allclose(ratio, torch.tensor(expected, dtype=DT), atol=0.01)
    if name == "W0":
        assert (ratio > 1.25).all()  # spirals outward
    else:
        assert ((ratio - 1).abs() < 0.10).all()  # roughly constant radius


# --- 5. the gate shares the matrix ---------------------------------------------------------------------------------
@pytest.mark.parametrize("param,init_on", STORAGES)
@pytest.mark.parametrize("m,n", [(1, 8), (3, 12)])
def test_gate_adds_exactly_Vz_bz_and_no_recurrent_matrix(param, init_on, m, n):
    plain = make_cell(m=m, n=n, param=param, init_on=init_on)
    gated = make_cell(m=m, n=n, param=param, init_on=init_on, gated=True)
    numel = [sum(p.numel() for p in c.parameters()) for c in (plain, gated)]
    assert numel[1] - numel[0] == n * m + n
    rec = "w_triu" if param == "triu" else "w_full"
    names = dict(gated.named_parameters())
    assert set(names) == {"input_weight", "input_bias", rec}  # one recurrent tensor, no second matrix
    assert names["input_weight"].shape == (2 * n, m)
    assert gated.redundant_parameters() == plain.redundant_parameters()


@pytest.mark.parametrize("param,init_on", STORAGES)
def test_gate_gradient_flows_into_the_shared_matrix(param, init_on):
    """d loss / d W of the gated cell equals the sum of the gradients through the gate's and the candidate's
    pre-activations, each computed with its own copy of W; the gate's share is not zero."""
    m, n, B, gamma, eps = 3, 10, 4, 0.05, 0.3
    cell = make_cell(m=m, n=n, param=param, init_on=init_on, gated=True, gamma=gamma, eps=eps)
    randomise(cell)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, B, m, dtype=DT, generator=g)
    h0 = torch.randn(B, n, dtype=DT, generator=g)
    weights = torch.randn(5, B, n, dtype=DT, generator=g)
    seq, _ = cell(x, state=(h0,), return_sequence=True)
    (seq * weights).sum().backward()
    rec = cell.w_triu if param == "triu" else cell.w_full
    grad_cell = rec.grad.clone()

    w_gate = rec.detach().clone().requires_grad_()
    w_cand = rec.detach().clone().requires_grad_()

    def build(w):
        if param == "full":
            W = w
        else:
            W = torch.zeros(n, n, dtype=DT).index_put(tuple(torch.triu_indices(n, n, 1)), w)
        return W - W.t() - gamma * torch.eye(n, dtype=DT)

    Mz, Mh = build(w_gate), build(w_cand)
    V, b = cell.input_weight.detach(), cell.input_bias.detach()
    H = h0.t()  # columns are samples
    loss = 0.0
    for t in range(5):
        X = x[t].t()
        z = torch.sigmoid(Mz @ H + V[n:] @ X + b[n:, None])
        H = H + eps * z * torch.tanh(Mh @ H + V[:n] @ X + b[:n, None])
        loss = loss + (H.t() * weights[t]).sum()
    loss.backward()
    assert torch.allclose(grad_cell, w_gate.grad + w_cand.grad, atol=1e-12, rtol=0)
    assert w_gate.grad.norm() > 0.05 * w_cand.grad.norm()  # the gate really contributes to W's gradient


# --- 6. parameter counts -------------------------------------------------------------------------------------------
def _counts(model_cfg, m: int) -> tuple[int, int]:
    spec = DataSpec(input_size=m, output_size=10, task=TaskType.classify_last)
    model = build_model(OmegaConf.structured(model_cfg), spec, build_task(spec.task))
    return count_parameters(model)


@pytest.mark.parametrize("n,m,gated,expected", [(128, 1, False, 9674), (128, 1, True, 9930),
                                                (256, 3, False, 36234), (256, 3, True, 37258)])
def test_parameter_counts_match_the_paper(n, m, gated, expected):
    numel, free = _counts(AntisymConfig(hidden_size=n, gated=gated), m)
    assert numel == free == expected
    numel_full, free_full = _counts(AntisymConfig(hidden_size=n, gated=gated, param="full"), m)
    assert free_full == expected
    assert numel_full == expected + n * (n + 1) // 2  # a full W stores n^2 instead of n(n-1)/2


def test_lstm_parameter_count_one_bias_per_gate():
    numel, free = _counts(LSTMConfig(hidden_size=128), 3)
    assert free == 68874  # 4 (128*3 + 128^2 + 128) + 1290
    assert numel == 68874 + 4 * 128  # nn.LSTM stores b_ih and b_hh


# --- 7. step bound -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_step_moves_each_coordinate_by_at_most_eps(gated):
    eps = 0.1
    cell = make_cell(m=5, n=32, eps=eps, gamma=0.01, sigma_w=8.0, gated=gated)
    g = torch.Generator().manual_seed(3)
    x = 20 * torch.randn(40, 8, 5, dtype=DT, generator=g)  # saturates tanh: the bound is nearly attained
    h0 = torch.randn(8, 32, dtype=DT, generator=g)
    with torch.no_grad():
        seq, _ = cell(x, state=(h0,), return_sequence=True)
    steps = torch.diff(torch.cat([h0[None], seq]), dim=0).abs()
    assert steps.max().item() <= eps * (1 + 1e-12)
    assert steps.max().item() > 0.9 * eps


# --- 8. initialisation statistics ----------------------------------------------------------------------------------
def _var(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().item()  # zero-mean variance


def _upper(A: torch.Tensor) -> torch.Tensor:
    n = A.shape[0]
    i, j = torch.triu_indices(n, n, 1)
    return A.detach()[i, j]


@pytest.mark.parametrize("gated", [False, True])
def test_init_variance_scale(gated):
    n, m, sigma_w = 512, 64, 2.0
    torch.manual_seed(0)
    cell = AntisymmetricRNN(m, n, sigma_w=sigma_w, gated=gated)  # param=triu, init_on=antisym, init_scale=variance
    assert abs(_var(cell.input_weight) * m - 1) < 0.10  # N(0, 1/m): variance 1/m
    assert abs(_var(cell.w_triu) * n / sigma_w**2 - 1) < 0.10  # free entries N(0, sigma_w^2 / n)
    assert abs(_var(_upper(cell.antisymmetric_part())) * n / sigma_w**2 - 1) < 0.10
    assert abs(cell.w_triu.mean().item()) < 0.01 and abs(cell.input_weight.mean().item()) < 0.01
    assert torch.count_nonzero(cell.input_bias) == 0  # all biases 0 (paper), gate bias included by default


def test_init_free_W_full_doubles_the_antisymmetric_variance():
    n, m, sigma_w = 512, 4, 2.0
    torch.manual_seed(1)
    cell = AntisymmetricRNN(m, n, sigma_w=sigma_w, param="full", init_on="free_W")
    assert abs(_var(cell.w_full) * n / sigma_w**2 - 1) < 0.10  # every entry of W is a free N(0, sigma_w^2/n)
    A = cell.antisymmetric_part().detach()
    assert abs(_var(_upper(A)) * n / (2 * sigma_w**2) - 1) < 0.10  # W - W^T: variance 2 sigma_w^2 / n
    torch.manual_seed(1)
    tri = AntisymmetricRNN(m, n, sigma_w=sigma_w, param="triu", init_on="free_W")
    assert abs(_var(tri.w_triu) * n / (2 * sigma_w**2) - 1) < 0.10  # the same law in triu storage


def test_init_antisym_full_fills_only_the_upper_triangle():
    n, sigma_w = 512, 1.5
    torch.manual_seed(2)
    cell = AntisymmetricRNN(2, n, sigma_w=sigma_w, param="full", init_on="antisym")
    assert torch.count_nonzero(torch.tril(cell.w_full)) == 0
    assert abs(_var(_upper(cell.antisymmetric_part())) * n / sigma_w**2 - 1) < 0.10


def test_init_std_bug_and_gate_bias():
    n, m, sigma_w = 512, 16, 4.0
    torch.manual_seed(3)
    cell = AntisymmetricRNN(m, n, sigma_w=sigma_w, init_scale="std_bug", gated=True, gate_bias_init=1.0)
    assert abs(_var(cell.input_weight) * m**2 - 1) < 0.10  # std 1/m (community code)
    assert abs(_var(cell.w_triu) * n**2 / sigma_w**2 - 1) < 0.10  # std sigma_w / n
    assert torch.equal(cell.input_bias[:n], torch.zeros(n))
    assert torch.equal(cell.input_bias[n:], torch.ones(n))  # the gate's bias b_z


# --- 9. forward == a naive column-form loop of Eq. 12 / Eq. 13 -----------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("param,init_on", STORAGES)
def test_forward_matches_column_form_reference(param, init_on, gated):
    T, B, m, n, eps, gamma = 9, 3, 4, 7, 0.25, 0.2
    cell = make_cell(m=m, n=n, param=param, init_on=init_on, gated=gated, eps=eps, gamma=gamma)
    randomise(cell, seed=7)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(T, B, m, dtype=DT, generator=g)
    h0 = torch.randn(B, n, dtype=DT, generator=g)
    weights = torch.randn(T, B, n, dtype=DT, generator=g)

    seq, (h_last,) = cell(x, state=(h0,), return_sequence=True)
    (seq * weights).sum().backward()
    last, _ = cell(x, state=(h0,))
    assert torch.equal(last, h_last) and torch.equal(last, seq[-1])

    # Reference, one sample at a time, column vectors, straight from the equations.
    W = free_W(cell).detach().clone().requires_grad_()
    V_all = cell.input_weight.detach().clone().requires_grad_()
    b_all = cell.input_bias.detach().clone().requires_grad_()
    M = W - W.t() - gamma * torch.eye(n, dtype=DT)
    V_h, b_h = V_all[:n], b_all[:n]
    V_z, b_z = V_all[n:], b_all[n:]
    ref_loss = 0.0
    for s in range(B):
        h = h0[s].reshape(n, 1)
        for t in range(T):
            x_t = x[t, s].reshape(m, 1)
            cand = torch.tanh(M @ h + V_h @ x_t + b_h.reshape(n, 1))
            if gated:
                z = torch.sigmoid(M @ h + V_z @ x_t + b_z.reshape(n, 1))  # Eq. 13: the same M
                h = h + eps * z * cand
            else:
                h = h + eps * cand  # Eq. 12
            assert torch.allclose(seq[t, s], h.reshape(n), atol=1e-12, rtol=0)
            ref_loss = ref_loss + (h.reshape(n) * weights[t, s]).sum()
    ref_loss.backward()
    assert torch.allclose(cell.input_weight.grad, V_all.grad, atol=1e-10, rtol=0)
    assert torch.allclose(cell.input_bias.grad, b_all.grad, atol=1e-10, rtol=0)
    if param == "full":
        assert torch.allclose(cell.w_full.grad, W.grad, atol=1e-10, rtol=0)
    else:
        i, j = torch.triu_indices(n, n, 1)
        assert torch.allclose(cell.w_triu.grad, W.grad[i, j], atol=1e-10, rtol=0)


def test_row_convention_sign():
    """A row-form M (h M) would flip the sign of W - W^T; the cell must act as M h on a column state."""
    cell = make_cell(m=1, n=2, eps=1.0, gamma=0.0)
    with torch.no_grad():
        cell.w_triu.fill_(math.atanh(0.5))  # W - W^T = [[0, a], [-a, 0]]
        cell.input_weight.zero_()
        cell.input_bias.zero_()
    h0 = torch.tensor([[0.0, 1.0]], dtype=DT)  # e_2
    out, _ = cell(torch.zeros(1, 1, 1, dtype=DT), state=(h0,))
    # M e_2 = (a, 0): the first coordinate moves by tanh(a) = +0.5 (a row-form product would give -0.5).
    assert torch.allclose(out, torch.tensor([[0.5, 1.0]], dtype=DT), atol=1e-15)


# --- 10. fused sequence Function == step-by-step autograd runner ----------------------------------------------------
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("param,init_on", STORAGES)
def test_fused_matches_autograd_runner(param, init_on, gated, with_state):
    T, B, m, n = 8, 3, 4, 7
    kwargs = {"param": param, "init_on": init_on, "gated": gated, "eps": 0.3, "gamma": 0.1}
    fused, runner = make_cell(m=m, n=n, impl="fused", **kwargs), make_cell(m=m, n=n, impl="cell", **kwargs)
    randomise(fused, seed=9)
    runner.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(10)
    x = torch.randn(T, B, m, dtype=DT, generator=g)
    h0 = torch.randn(B, n, dtype=DT, generator=g) if with_state else None
    w_seq, w_fin = torch.randn(T, B, n, dtype=DT, generator=g), torch.randn(B, n, dtype=DT, generator=g)
    results = []
    for cell in (fused, runner):
        x_c = x.clone().requires_grad_()
        state = None if h0 is None else (h0.clone().requires_grad_(),)
        seq, (h_seq,) = cell(x_c, state, return_sequence=True)
        last, (h_last,) = cell(x_c, state)
        assert torch.equal(last, seq[-1]) and torch.equal(h_seq, last) and torch.equal(h_last, last)
        ((seq * w_seq).sum() + (h_seq * w_fin).sum() + last.pow(2).sum()).backward()
        grads = {k: p.grad.clone() for k, p in cell.named_parameters()}
        grads["x"] = x_c.grad
        if state is not None:
            grads["h0"] = state[0].grad
        results.append((seq.detach(), last.detach(), grads))
    (s1, l1, g1), (s2, l2, g2) = results
    assert torch.allclose(s1, s2, atol=1e-12, rtol=0) and torch.allclose(l1, l2, atol=1e-12, rtol=0)
    assert g1.keys() == g2.keys() and len(g1) == 4 + with_state
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-10, rtol=0), k
        assert g1[k].abs().max() > 0, k
    # the fused path records one node for the whole sequence, the runner one set of nodes per step
    assert backward_node_counts(fused(x)[0])["AntisymSequenceBackward"] == 1
    assert "AntisymSequenceBackward" not in backward_node_counts(runner(x)[0])


@pytest.mark.parametrize("gated", [False, True])
def test_fused_no_grad_forward_and_step_agree(gated):
    cell = make_cell(m=3, n=9, gated=gated, eps=0.3, gamma=0.1)
    randomise(cell, seed=11)
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 2, 3, dtype=DT, generator=g)
    h0 = torch.randn(2, 9, dtype=DT, generator=g)
    seq, (h,) = cell(x, (h0,), return_sequence=True)
    with torch.no_grad():
        seq_ng, (h_ng,) = cell(x, (h0,), return_sequence=True)
        last_ng, _ = cell(x, (h0,))
        ctx, state = cell.prepare(), (h0,)
        for t in range(6):
            state = cell.step(cell.project_inputs(x[t : t + 1])[0], state, ctx)
            assert torch.allclose(state[0], seq_ng[t], atol=1e-12, rtol=0)
    assert torch.equal(seq.detach(), seq_ng) and torch.equal(last_ng, h_ng) and torch.equal(h.detach(), h_ng)
    with pytest.raises(ValueError, match="model.impl"):
        AntisymmetricRNN(1, 4, impl="cudnn")


@pytest.mark.parametrize("kernel", ["torch", "native"])
@pytest.mark.parametrize("return_sequence", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_fused_function_gradcheck(gated, return_sequence, kernel):
    """torch.autograd.gradcheck of AntisymSequence itself (T=4, B=3, n=3) w.r.t. gx, Mt and h0, through its torch
    loop (impl=fused) and through the C++ kernel (impl=native)."""
    compiled = native.load("antisym") if kernel == "native" else None
    if kernel == "native" and compiled is None:
        pytest.skip("no C++ toolchain: the native kernel cannot be built")
    g = torch.Generator().manual_seed(13)
    T, B, n = 4, 3, 3
    gx = torch.randn(T, B, 2 * n if gated else n, dtype=DT, generator=g).requires_grad_()
    mt = torch.randn(n, n, dtype=DT, generator=g).requires_grad_()  # any matrix: the Function does not assume M's form
    h0 = torch.randn(B, n, dtype=DT, generator=g).requires_grad_()

    def f(gx, mt, h0):
        return AntisymSequence.apply(gx, mt, h0, 0.4, gated, return_sequence, compiled)

    assert torch.autograd.gradcheck(f, (gx, mt, h0), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("gated", [False, True])
def test_fused_float32_matches_runner(gated):
    """The default dtype: the fused path agrees with the runner to float32 rounding (T=50)."""
    torch.manual_seed(0)
    cells = [AntisymmetricRNN(2, 16, eps=0.1, gated=gated, impl=impl) for impl in ("fused", "cell")]
    cells[1].load_state_dict(cells[0].state_dict())
    x = torch.randn(50, 4, 2, generator=torch.Generator().manual_seed(1))
    assert_fused_matches_runner_float32(cells, x)


@pytest.mark.parametrize("gated", [False, True])
def test_fused_backward_twice_with_retain_graph(gated):
    """The hand-written backward leaves the saved tensors untouched: a second backward gives the same gradients."""
    cell = make_cell(m=3, n=8, gated=gated, eps=0.3)
    seq, (h,) = cell(torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(14)), return_sequence=True)
    loss = seq.pow(2).sum() + h.sum()
    first = torch.autograd.grad(loss, list(cell.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(cell.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
