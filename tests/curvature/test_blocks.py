"""KronBlock against its dense matrix, and its three initialisations."""

from __future__ import annotations

import pytest
import torch

from fls_kernels.curvature import KronBlock
from fls_reference.dense import kron_matrix
from tests.dense import q_matrix

F64 = torch.float64


def randomised(m, n):
    block = KronBlock(m, n, dtype=F64)
    with torch.no_grad():
        block.R.add_(torch.randn(m, m, dtype=F64) / 3)
        block.L.add_(torch.randn(n, n, dtype=F64) / 3)
        block.A.copy_(torch.rand(m, n, dtype=F64) + 0.5)
    return block


@pytest.mark.parametrize("m,n", [(1, 1), (3, 5), (7, 2)])
def test_qv_and_diag_equal_the_dense_matrix(m, n):
    block = randomised(m, n)
    V = torch.randn(m, n, dtype=F64)
    Q = kron_matrix(block.A.detach(), block.R.detach().T @ block.R.detach(), block.L.detach() @ block.L.detach().T)
    with torch.no_grad():
        torch.testing.assert_close(block.qv(V).reshape(-1), Q @ V.reshape(-1))
        torch.testing.assert_close(block.diag().reshape(-1), Q.diagonal())
        torch.testing.assert_close(q_matrix(block), Q)


def test_grams_are_cached_until_lambda_changes():
    block = randomised(3, 4)
    with torch.no_grad():
        g1 = block.grams()
        assert block.grams()[0] is g1[0]
        block.R.mul_(2)
        g2 = block.grams()
    assert g2[0] is not g1[0]
    torch.testing.assert_close(g2[0], 4 * g1[0])


def test_memo_recomputes_only_after_lambda_changes():
    """A solver's derived factors are computed once per λ: again after an in-place optimizer step on any of R, L,
    A, or a load, not otherwise; without recording gradients."""
    block = randomised(3, 4)
    calls = []

    def compute():
        calls.append(1)
        return block.A.sum() * 1.0

    first = block.memo("x", compute)
    assert block.memo("x", compute) is first and len(calls) == 1 and not first.requires_grad
    for change in (
        lambda: torch.optim.SGD(block.parameters(), lr=0.1).step(),
        lambda: block.load_state_dict({k: v + 1 for k, v in block.state_dict().items()}),
    ):
        block.zero_grad()
        block.qv(torch.randn(3, 4, dtype=F64)).sum().backward()
        before = len(calls)
        change()
        again = block.memo("x", compute)
        assert len(calls) == before + 1 and block.memo("x", compute) is again
    torch.testing.assert_close(block.memo("x", compute), block.A.detach().sum())
    assert block.memo("y", lambda: 7) == 7, "names are cached apart"


def test_qv_is_differentiable_in_lambda():
    block = randomised(3, 4)
    block.qv(torch.randn(3, 4, dtype=F64)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_identity_and_diagonal_inits():
    block = KronBlock(3, 4, dtype=F64)
    block.init_identity(2.5)
    torch.testing.assert_close(q_matrix(block), 2.5 * torch.eye(12, dtype=F64))
    diag = torch.rand(3, 4, dtype=F64)
    block.init_diagonal(diag, 0.1)
    torch.testing.assert_close(q_matrix(block), torch.diag(1 / (diag.reshape(-1) + 0.1)))
    with pytest.raises(ValueError, match="scale"):
        block.init_identity(-1.0)


def test_kfac_init_is_the_damped_factored_inverse():
    m, n, gamma = 3, 4, 0.04
    Xa, Xg = torch.randn(n, 10, dtype=F64), torch.randn(m, 10, dtype=F64)
    act, grad = Xa @ Xa.T / 10, Xg @ Xg.T / 10
    block = KronBlock(m, n, dtype=F64)
    block.init_kfac(act, grad, gamma)
    pi = ((act.trace() / n) / (grad.trace() / m)).sqrt()
    G_R = torch.linalg.inv(grad + gamma**0.5 / pi * torch.eye(m, dtype=F64))
    G_L = torch.linalg.inv(act + pi * gamma**0.5 * torch.eye(n, dtype=F64))
    torch.testing.assert_close(q_matrix(block), torch.kron(G_R, G_L))


def test_balance_keeps_q_and_puts_r_and_l_at_one_scale():
    """R ← cR, L ← L/c with c² = rms(L)/rms(R): Q the same to float64 rounding, rms(R) = rms(L) after."""
    g = torch.Generator().manual_seed(0)
    block = KronBlock(5, 7, dtype=torch.float64)
    with torch.no_grad():
        block.R.copy_(
            40 * (torch.eye(5, dtype=torch.float64) + 0.1 * torch.randn(5, 5, generator=g, dtype=torch.float64))
        )
        block.L.copy_(
            0.02 * (torch.eye(7, dtype=torch.float64) + 0.1 * torch.randn(7, 7, generator=g, dtype=torch.float64))
        )
        block.A.uniform_(0.5, 1.5, generator=g)
    before = q_matrix(block).detach().clone()
    A = block.A.detach().clone()
    block.balance_()
    rms = [float(p.detach().square().mean().sqrt()) for p in (block.R, block.L)]
    assert rms[0] == pytest.approx(rms[1], rel=1e-12)  # they were 2000× apart
    torch.testing.assert_close(q_matrix(block).detach(), before, rtol=1e-12, atol=0.0)
    assert torch.equal(block.A, A)
