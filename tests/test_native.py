"""model.impl=native: the C++ AntisymmetricRNN kernel (rnnrepro/native/antisym.cpp) computes the same function and
gradients as the fused torch Function, for any thread count, and falls back to fused where it cannot be built. Its
gradcheck is tests/test_antisymmetric.py::test_fused_function_gradcheck[native]."""

from __future__ import annotations

import warnings

import pytest
import torch
from hydra.errors import ConfigCompositionException

from rnnrepro import native
from rnnrepro.cells.antisymmetric import AntisymmetricRNN

DT = torch.float64
KERNEL = native.load("antisym")
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no C++ toolchain: the native kernel cannot be built")


def pair(gated: bool, m: int = 3, n: int = 7, dtype=DT, randomise: bool = True, eps: float = 0.3,
         **kwargs) -> tuple[AntisymmetricRNN, AntisymmetricRNN]:
    torch.manual_seed(0)
    fused = AntisymmetricRNN(m, n, gated=gated, impl="fused", eps=eps, gamma=0.1, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero biases and gate weights, so every term of the backward is exercised
        for p in fused.parameters() if randomise else ():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.7)
    nat = AntisymmetricRNN(m, n, gated=gated, impl="native", eps=eps, gamma=0.1, **kwargs).to(dtype)
    nat.load_state_dict(fused.state_dict())
    return fused, nat


def run_both(cells, x, h0, return_sequence):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(x.shape[0], x.shape[1], cells[0].hidden_size, dtype=x.dtype, generator=g)
    out = []
    for cell in cells:
        x_c = x.clone().requires_grad_()
        h_c = h0.clone().requires_grad_()
        seq, (h,) = cell(x_c, (h_c,), return_sequence=return_sequence)
        loss = (h * w[0]).sum() + ((seq * w).sum() if return_sequence else h.pow(2).sum())
        loss.backward()
        out.append({"seq": seq.detach(), "h": h.detach(), "x": x_c.grad, "h0": h_c.grad,
                    **{k: p.grad.clone() for k, p in cell.named_parameters()}})
    return out


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("return_sequence", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("param", ["triu", "full"])
def test_native_matches_fused(gated, return_sequence, threads, param):
    """B = 7 rows over 3 threads: uneven row blocks (3 + 3 + 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cells = pair(gated, param=param)
        g = torch.Generator().manual_seed(3)
        x, h0 = torch.randn(9, 7, 3, dtype=DT, generator=g), torch.randn(7, 7, dtype=DT, generator=g)
        fused, nat = run_both(cells, x, h0, return_sequence)
    finally:
        torch.set_num_threads(before)
    assert fused.keys() == nat.keys()
    for k in fused:
        # tanh is computed as 2 sigmoid(2a) - 1 in the kernel: equal to rounding, not bit for bit
        assert torch.allclose(fused[k], nat[k], atol=1e-12, rtol=0), k
        assert fused[k].abs().max() > 0, k


@needs_kernel
@pytest.mark.parametrize("gated", [False, True])
def test_native_float32_and_no_grad_forward(gated):
    """The training dtype at the paper's shape per step (n = 128, T = 60): native agrees with fused to float32
    rounding, and its no-grad forward (evaluation) equals its training forward."""
    fused, nat = pair(gated, m=1, n=128, dtype=torch.float32, randomise=False, eps=0.01)  # the paper's init
    x = torch.randn(60, 16, 1, generator=torch.Generator().manual_seed(4))
    h0 = torch.zeros(16, 128)
    a, b = run_both((fused, nat), x, h0, return_sequence=False)
    for k in a:
        scale = a[k].abs().max()
        assert (a[k] - b[k]).abs().max() <= 1e-4 * scale, k
    with torch.no_grad():
        seq_ng, (h_ng,) = nat(x, (h0,), return_sequence=True)
    assert torch.equal(h_ng, b["h"]) and torch.equal(seq_ng[-1], b["h"])


@needs_kernel
def test_native_records_one_node_and_keeps_saved_tensors():
    _, nat = pair(False)
    x = torch.randn(5, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    seq, (h,) = nat(x, return_sequence=True)
    assert type(seq.grad_fn).__name__ == "AntisymSequenceBackward"
    loss = seq.pow(2).sum() + h.sum()
    first = torch.autograd.grad(loss, list(nat.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(nat.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_without_a_compiler_native_falls_back_to_fused_with_one_warning(monkeypatch):
    monkeypatch.setattr(native.shutil, "which", lambda _name: None)
    native.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*impl=fused"):
            cell = AntisymmetricRNN(1, 4, impl="native")
        assert cell.impl == "fused"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # cached: no second warning
            assert AntisymmetricRNN(1, 4, impl="native").impl == "fused"
    finally:
        native.load.cache_clear()


def test_a_failing_build_falls_back_with_the_error(monkeypatch):
    from torch.utils import cpp_extension

    def broken(**_kwargs):
        raise RuntimeError("Error building extension 'rnnrepro_antisym'")

    monkeypatch.setattr(cpp_extension, "load", broken)
    native.load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="building the antisym kernel failed.*Error building extension"):
            assert native.load("antisym") is None
    finally:
        native.load.cache_clear()


def test_native_is_composable_for_antisym_only(compose_cfg):
    cfg = compose_cfg("model=antisym", "model.impl=native")
    assert cfg.model.impl == "native"
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model=sbo", "model.impl=native")
    assert "expected one of [fused, cell]" in str(err.value.__cause__)
