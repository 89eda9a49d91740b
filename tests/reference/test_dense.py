"""The oracle against brute force: explicit Kronecker matrices, exact OBS, sorted lists."""

from __future__ import annotations

import itertools

import pytest
import torch

import fls_reference as ref
from fls_kernels.testing import AWKWARD_SHAPES, assert_close
from fls_reference import dense

SHAPES = [pytest.param(m, n, id=i) for i, m, n in AWKWARD_SHAPES if m * n <= 400]
F64 = torch.float64


def random_block(m: int, n: int, dtype=F64):
    A = torch.rand(m, n, dtype=dtype) + 0.5
    R = torch.randn(m, m, dtype=dtype) / m**0.5 + torch.eye(m, dtype=dtype)
    L = torch.randn(n, n, dtype=dtype) / n**0.5 + torch.eye(n, dtype=dtype)
    G_R, G_L = R.T @ R, L @ L.T
    return A, G_R, G_L, G_R.diagonal().clone(), G_L.diagonal().clone()


@pytest.mark.parametrize("m,n", SHAPES)
def test_kron_qv_and_diag_equal_dense_matrix(m, n):
    A, G_R, G_L, r, l = random_block(m, n)
    V = torch.randn(m, n, dtype=F64)
    Q = dense.kron_matrix(A, G_R, G_L)
    assert_close(ref.kron_qv(V, A, G_R, G_L), (Q @ V.reshape(-1)).reshape(m, n), tol=1e-12)
    assert_close(ref.kron_diag(A, r, l), Q.diagonal().reshape(m, n), tol=1e-12)
    assert torch.linalg.eigvalsh(Q).min() > -1e-9, "Q must be PSD"


def test_kron_qv_uses_g_l_on_the_right_even_when_asymmetric():
    m, n = 3, 4
    A = torch.rand(m, n, dtype=F64)
    G_R, G_L = torch.randn(m, m, dtype=F64), torch.randn(n, n, dtype=F64)
    V = torch.randn(m, n, dtype=F64)
    Q = dense.kron_matrix(A, G_R, G_L)
    assert_close(ref.kron_qv(V, A, G_R, G_L), (Q @ V.reshape(-1)).reshape(m, n), tol=1e-12)


@pytest.mark.parametrize("m,n", SHAPES)
def test_obs_scores_equal_dense_formula(m, n):
    A, G_R, G_L, r, l = random_block(m, n)
    W = torch.randn(m, n, dtype=F64)
    mask = torch.rand(m, n) > 0.3
    Q = dense.kron_matrix(A, G_R, G_L)
    expected = torch.full((m, n), float("inf"), dtype=F64)
    for q in range(m * n):
        if mask.reshape(-1)[q]:
            rho, _ = dense.obs_single(W.reshape(-1), Q, q)
            expected.view(-1)[q] = rho
    assert_close(ref.obs_scores(W, A, r, l, mask), expected, tol=1e-12)


@pytest.mark.parametrize("m,n", SHAPES)
def test_surgeon_update_is_sum_of_single_weight_updates(m, n):
    A, G_R, G_L, r, l = random_block(m, n)
    W = torch.randn(m, n, dtype=F64)
    alive = torch.rand(m, n) > 0.2
    prune = alive & (torch.rand(m, n) > 0.6)
    keep = alive & ~prune
    Q = dense.kron_matrix(A, G_R, G_L)
    theta = W.reshape(-1).clone()
    total = torch.zeros_like(theta)
    for q in prune.reshape(-1).nonzero().squeeze(1).tolist():
        total += dense.obs_single(theta, Q, q)[1]
    expected = torch.where(keep, (theta + total).reshape(m, n), torch.zeros_like(W))
    out = ref.surgeon_update_(W, A, G_R, G_L, r, l, prune, keep)
    assert out is W
    assert_close(W, expected, tol=1e-12)
    assert (W[~keep] == 0).all()


@pytest.mark.parametrize("m,n", [(3, 4), (5, 2), (1, 6)])
def test_single_weight_loss_increase_equals_score_when_q_is_the_inverse(m, n):
    # Quadratic loss ½ (θ − θ*)ᵀ F_γ (θ − θ*) at θ = θ*, with Q = F_γ⁻¹ exactly.
    A, G_R, G_L, r, l = random_block(m, n)
    Q = dense.kron_matrix(A, G_R, G_L)
    F = torch.linalg.inv(Q)
    W = torch.randn(m, n, dtype=F64)
    scores = ref.obs_scores(W, A, r, l, torch.ones(m, n, dtype=torch.bool))
    for q in range(m * n):
        prune = torch.zeros(m * n, dtype=torch.bool)
        prune[q] = True
        prune = prune.reshape(m, n)
        W1 = ref.surgeon_update_(W.clone(), A, G_R, G_L, r, l, prune, ~prune)
        delta = (W1 - W).reshape(-1)
        assert W1.reshape(-1)[q] == 0
        increase = 0.5 * delta @ F @ delta
        torch.testing.assert_close(increase, scores.reshape(-1)[q], rtol=1e-9, atol=0)
        exact_loss, exact_delta = dense.obs_exact_set(W.reshape(-1), F, prune.reshape(-1))
        torch.testing.assert_close(delta, exact_delta, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(exact_loss, increase, rtol=1e-9, atol=0)


def brute_smallest(scores, k):
    flat = [(float(v), t, i) for t, s in enumerate(scores) for i, v in enumerate(s.reshape(-1).tolist())]
    flat = [x for x in flat if x[0] < float("inf")]
    chosen = {(t, i) for _, t, i in sorted(flat)[:k]}
    return [torch.tensor([(t, i) in chosen for i in range(s.numel())]).reshape(s.shape) for t, s in enumerate(scores)]


@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_select_smallest_matches_brute_force_with_ties_and_inf(k):
    scores = [torch.randint(0, 5, shape).double() for shape in [(3, 4), (7,), (2, 3, 5)]]
    scores[0][0, 1] = float("inf")
    scores[2][1, 1, 1] = float("-inf")
    got = ref.select_smallest(scores, k)
    for g, e, s in zip(got, brute_smallest(scores, k), scores):
        assert g.shape == s.shape and g.dtype == torch.bool
        assert torch.equal(g, e)
    assert sum(int(g.sum()) for g in got) == k


def test_select_smallest_errors():
    s = [torch.tensor([1.0, float("inf")])]
    with pytest.raises(ValueError, match="only 1"):
        ref.select_smallest(s, 2)
    with pytest.raises(ValueError, match="NaN"):
        ref.select_smallest([torch.tensor([float("nan")])], 0)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (0, 3), (3, 3), (3, 8)])
def test_select_nm_matches_brute_force(n, m):
    rows, groups = 5, 3
    scores = torch.randint(0, 4, (rows, groups * m)).double()
    got = ref.select_nm(scores, n, m)
    for i, g in itertools.product(range(rows), range(groups)):
        block = scores[i, g * m : (g + 1) * m].tolist()
        chosen = sorted(range(m), key=lambda j: (block[j], j))[:n]
        expected = torch.zeros(m, dtype=torch.bool)
        expected[chosen] = True
        assert torch.equal(got[i, g * m : (g + 1) * m], expected)
