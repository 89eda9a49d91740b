"""The aux-loss fitter reaches the exact inverse where the Fisher is exactly Kronecker."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fls_kernels.curvature import AuxFitter, Gaussian, KronBlock, ModelCurvature
from fls_kernels.layers import find_layers
from tests.dense import q_matrix


def least_squares(n_in=6, m=4, N=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    eig = torch.logspace(math.log10(0.03), math.log10(5.3), n_in)
    basis, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=g))
    X = torch.randn(N, n_in, generator=g) @ (basis * eig.sqrt()).T
    return X, nn.Linear(n_in, m)


def batches(X, size=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield X[torch.randint(0, len(X), (size,), generator=g)]


def exact_inverse(X, m, gamma):
    """F_γ⁻¹ for y = Wx + b with a unit Gaussian: F = I_m ⊗ E[x̃x̃ᵀ] (x̃ = [x, 1]), row-major."""
    Xt = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    F = torch.kron(torch.eye(m, dtype=torch.float64), Xt.T @ Xt / len(X))
    return torch.linalg.inv(F + gamma * torch.eye(F.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("init", ["identity", "diagonal"])
def test_fit_converges_to_the_exact_inverse_fisher(init):
    gamma = 1e-2
    X, layer = least_squares()
    views = find_layers(layer)
    curv = ModelCurvature(layer, views, Gaussian(1.0))
    data = batches(X)
    stats = curv.statistics(data, 4, kfac=False)[0]
    block = KronBlock(views[0].m, views[0].n)
    if init == "identity":
        block.init_identity(1 / (stats.diag.mean().item() + gamma))
    else:
        block.init_diagonal(stats.diag, gamma)
    target = exact_inverse(X, views[0].m, gamma)

    def error():
        with torch.no_grad():
            return ((q_matrix(block).double() - target).norm() / target.norm()).item()

    start = error()
    fitter = AuxFitter([block], curv.fvp, gamma, lr=1e-3, generator=torch.Generator().manual_seed(0))
    losses = fitter.run(data, 2500)
    assert start > 0.5
    assert error() < 0.05
    # The aux loss approaches its minimum −½ tr(F_γ⁻¹) (sampled: compare the mean of the last 1000 steps).
    floor = -0.5 * target.trace().item()
    tail = sum(losses[-1000:]) / 1000
    assert abs(tail - floor) < 0.05 * abs(floor), (tail, floor)
    assert sum(losses[:50]) / 50 > floor + 0.2 * abs(floor)


def test_masked_fit_lowers_the_masked_aux_loss_towards_its_minimum():
    """With a mask M the aux loss only sees the kept entries: E𝒜 = ½ tr(Q_MM F_MM Q_MM) − tr(Q_MM), minimum
    −½ tr(F_MM⁻¹). The restricted inverse is not Kronecker, so the fit approaches, not reaches, it."""
    gamma = 1e-2
    X, layer = least_squares(n_in=5, m=3)
    views = find_layers(layer)
    curv = ModelCurvature(layer, views, Gaussian(1.0))
    data = batches(X)
    block = KronBlock(views[0].m, views[0].n)
    block.init_diagonal(curv.statistics(data, 4, kfac=False)[0].diag, gamma)
    fitter = AuxFitter([block], curv.fvp, gamma, lr=1e-3, generator=torch.Generator().manual_seed(0))
    fitter.run(data, 1500)
    mask = torch.ones(3, 6)
    mask[0, 1] = mask[2, 4] = mask[1, 0] = mask[1, 3] = 0
    keep = mask.reshape(-1).bool()
    Xt = torch.cat([X, torch.ones(len(X), 1)], 1).double()
    F = torch.kron(torch.eye(3, dtype=torch.float64), Xt.T @ Xt / len(X)) + gamma * torch.eye(18, dtype=torch.float64)
    F_kept = F[keep][:, keep]

    def expected_aux():
        with torch.no_grad():
            Q = q_matrix(block).double()[keep][:, keep]
        return (0.5 * torch.trace(Q @ F_kept @ Q) - torch.trace(Q)).item()

    floor = -0.5 * torch.linalg.inv(F_kept).trace().item()
    before = expected_aux()
    fitter.run(data, 1500, masks=[mask])
    after = expected_aux()
    assert after < before
    assert after - floor < 0.5 * (before - floor), (before, after, floor)


def test_divergence_raises_and_leaves_lambda_finite():
    X, layer = least_squares()
    views = find_layers(layer)
    curv = ModelCurvature(layer, views, Gaussian(1.0))
    block = KronBlock(views[0].m, views[0].n)
    block.init_identity(1.0)
    with torch.no_grad():
        block.A[0, 0] = float("inf")
    fitter = AuxFitter([block], curv.fvp, 1e-2)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(FloatingPointError, match="diverged"):
        fitter.step(X[:64])
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k])


def _fitter(check_every, seed=0, lr=1e-3):
    X, layer = least_squares()
    views = find_layers(layer)
    curv = ModelCurvature(layer, views, Gaussian(1.0))
    block = KronBlock(views[0].m, views[0].n)
    block.init_identity(1.0)
    fitter = AuxFitter(
        [block], curv.fvp, 1e-2, lr=lr, generator=torch.Generator().manual_seed(seed), check_every=check_every
    )
    return X, block, fitter


def test_divergence_inside_a_window_not_caused_by_data_raises_floating_point_error():
    X, block, fitter = _fitter(4)
    fitter.run(batches(X), 4)
    after_check = {k: v.clone() for k, v in block.state_dict().items()}
    for group in fitter.optimizer.param_groups:
        group["lr"] = 1e30  # the next updates overflow λ
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+ .*back at step 4"):
        fitter.run(batches(X), 8)
    for k, v in block.state_dict().items():
        assert torch.equal(v, after_check[k]), k


def test_deferred_checks_take_the_same_steps_as_checking_every_step():
    X, block_a, every = _fitter(1)
    _, block_b, deferred = _fitter(7)
    losses_a = every.run(batches(X), 30)
    losses_b = deferred.run(batches(X), 30)
    assert losses_a == losses_b and len(losses_b) == 30
    for k, v in block_a.state_dict().items():
        assert torch.equal(v, block_b.state_dict()[k]), k
    assert torch.equal(every.generator.get_state(), deferred.generator.get_state())


def _poisoned(X, at):
    """The batches of :func:`batches`, the ``at``-th one (from 0) holding a NaN."""
    for t, x in enumerate(batches(X)):
        yield torch.full_like(x, float("nan")) if t == at else x


def test_divergence_inside_a_window_rewinds_to_the_last_check():
    X, block, fitter = _fitter(4)
    fitter.run(batches(X), 4)  # one full window: checked
    after_check = {k: v.clone() for k, v in block.state_dict().items()}
    rng = fitter.generator.get_state()
    adam = {k: v.clone() for k, v in fitter.optimizer.state_dict()["state"][0].items()}
    with pytest.raises(ValueError, match="loader: batch 2 contains NaN"):  # the divergence, traced to its batch
        fitter.run(_poisoned(X, 2), 8)
    for k, v in block.state_dict().items():
        assert torch.equal(v, after_check[k]), k
        assert torch.isfinite(v).all()
    assert torch.equal(fitter.generator.get_state(), rng)
    for k, v in fitter.optimizer.state_dict()["state"][0].items():
        assert torch.equal(v, adam[k]), k
    assert len(fitter.history) == 4
    # and the fit goes on from there as if the failed run had not happened
    _, block_ref, reference = _fitter(4)
    reference.run(batches(X), 4)
    assert fitter.run(batches(X, seed=3), 4) == reference.run(batches(X, seed=3), 4)
    for k, v in block.state_dict().items():
        assert torch.equal(v, block_ref.state_dict()[k]), k


def test_probes_of_every_block_are_drawn_in_one_call():
    torch.manual_seed(0)
    layers = [nn.Linear(3, 5), nn.Linear(5, 2)]
    model = nn.Sequential(layers[0], nn.Tanh(), layers[1])
    views = find_layers(model)
    curv = ModelCurvature(model, views, Gaussian(1.0))
    blocks = [KronBlock(v.m, v.n) for v in views]
    for b in blocks:
        b.init_identity(1.0)
    fitter = AuxFitter(blocks, curv.fvp, 1e-2, generator=torch.Generator().manual_seed(5))
    us, _, _ = fitter._probe(None)
    expected = torch.randn(sum(b.m * b.n for b in blocks), generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.cat([u.reshape(-1) for u in us]), expected)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_check_every_is_validated(value):
    with pytest.raises((ValueError, TypeError), match="check_every"):
        _fitter(value)


def test_compiled_lambda_side_takes_the_steps_of_the_eager_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    views = find_layers(model)
    curv = ModelCurvature(model, views, Gaussian(1.0))
    X = torch.randn(512, 4)
    runs = []
    for mode in (None, "default"):
        blocks = [KronBlock(v.m, v.n) for v in views]
        for b in blocks:
            b.init_identity(0.5)
        fitter = AuxFitter(blocks, curv.fvp, 1e-2, generator=torch.Generator().manual_seed(1), compile_mode=mode)
        masks = [torch.rand(v.m, v.n, generator=torch.Generator().manual_seed(i)) > 0.3 for i, v in enumerate(views)]
        losses = fitter.run(batches(X, 64), 3) + fitter.run(batches(X, 64, seed=2), 3, masks=masks)
        runs.append((losses, [p.detach().clone() for p in fitter.params]))
    (eager, lam_eager), (compiled, lam_compiled) = runs
    assert compiled == pytest.approx(eager, rel=1e-5)
    for a, b in zip(lam_eager, lam_compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compile_mode_is_validated():
    with pytest.raises(ValueError, match="compile_mode"):
        AuxFitter([KronBlock(2, 3)], lambda batch, vs: vs, 1e-2, compile_mode="fast")


@pytest.mark.parametrize(("m", "n", "expected"), [(4, 36, True), (36, 4, True), (16, 16, False), (10, 26, False)])
def test_factored_follows_the_multiply_add_count(m, n, expected):
    from fls_kernels.curvature.fitter import factored

    gram, factors = 2 * (m**3 + n**3) + 4 * (m * m * n + m * n * n), 8 * (m * m * n + m * n * n)
    assert factored(m, n) == expected == (factors < gram)


def test_factored_products_equal_the_gram_products_and_their_gradients(monkeypatch):
    """Blocks whose products go through R and L (wide: a 3×3 convolution's n = 9·c_in) take the same steps."""
    from fls_kernels.curvature import fitter as fitter_module

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 10)).double()
    views = find_layers(model)
    assert [fitter_module.factored(v.m, v.n) for v in views] == [True, False]
    curv = ModelCurvature(model, views, Gaussian(1.0))
    X = torch.randn(256, 2, 4, 4, dtype=torch.float64)
    runs = []
    for force_grams in (False, True):
        if force_grams:
            monkeypatch.setattr(fitter_module, "factored", lambda m, n: False)
        blocks = [KronBlock(v.m, v.n, dtype=torch.float64) for v in views]
        for b, v in zip(blocks, views):
            with torch.no_grad():
                b.R.copy_(torch.eye(v.m) + 0.1 * torch.randn(v.m, v.m, generator=torch.Generator().manual_seed(1)))
                b.L.copy_(torch.eye(v.n) + 0.1 * torch.randn(v.n, v.n, generator=torch.Generator().manual_seed(2)))
                b.A.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
        fitter = AuxFitter(blocks, curv.fvp, 1e-2, generator=torch.Generator().manual_seed(4))
        losses = fitter.run(batches(X, 32), 5)
        runs.append((losses, [p.detach().clone() for p in fitter.params]))
    (factored_losses, factored_lambda), (gram_losses, gram_lambda) = runs
    assert factored_losses == pytest.approx(gram_losses, rel=1e-10)
    for a, b in zip(factored_lambda, gram_lambda):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------- held-out loss
def _float64_problem(seed=0):
    X, layer = least_squares(n_in=5, m=3, N=64, seed=seed)
    X, layer = X.double(), layer.double()
    views = find_layers(layer)
    curv = ModelCurvature(layer, views, Gaussian(1.0))
    block = KronBlock(views[0].m, views[0].n, dtype=torch.float64)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        block.A.copy_(1 + 0.3 * torch.rand(block.A.shape, generator=g, dtype=torch.float64))
        block.init_identity(0.7)
    return X, layer, curv, block


@pytest.mark.parametrize("focused", [False, True])
def test_the_held_out_aux_loss_is_the_aux_loss_of_each_probe_in_float64(focused):
    """𝒜(λ; u) = ½ (Qu)ᵀ(F + γI)(Qu) − uᵀQu with F the batch's exact Fisher, u = M ⊙ S ⊙ z the seed's probes
    (S = 1, or a focus scale), masked."""
    gamma = 0.05
    X, _, curv, block = _float64_problem()
    Xt = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], 1)
    F = torch.kron(torch.eye(3, dtype=torch.float64), Xt.T @ Xt / len(X))  # I ⊗ E[x̃x̃ᵀ] over the batch
    Q = q_matrix(block).detach()
    mask = torch.ones(3, 6, dtype=torch.float64)
    mask[1, 2] = mask[0, 5] = 0
    scale = torch.rand(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.05
    fitter = AuxFitter([block], curv.fvp, gamma, generator=torch.Generator().manual_seed(0))
    if focused:
        fitter.probe_scale = [scale]
    got = fitter.evaluate([X], probes=3, seed=7, masks=[mask])
    g = torch.Generator().manual_seed(7)
    expected = 0.0
    M = mask.reshape(-1)
    S = scale.reshape(-1) if focused else torch.ones(18, dtype=torch.float64)
    for _ in range(3):
        u = torch.randn(18, generator=g, dtype=torch.float64) * S * M
        v = M * (Q @ u)
        expected += (0.5 * v @ (F + gamma * torch.eye(18, dtype=torch.float64)) @ v - u @ v).item() / 3
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_the_held_out_aux_loss_moves_nothing_and_pairs_its_probes():
    _, _, curv, block = _float64_problem()
    X = least_squares(n_in=5, m=3, N=64, seed=3)[0].double()
    step_rng = torch.Generator().manual_seed(0)
    fitter = AuxFitter([block], curv.fvp, 0.05, generator=step_rng)
    fitter.run(batches(X, size=32), 3)
    params = [p.detach().clone() for p in block.parameters()]
    rng, state = step_rng.get_state(), str(fitter.optimizer.state_dict())
    a = fitter.evaluate([X[:32], X[32:]], probes=2, seed=1)
    assert a == fitter.evaluate([X[:32], X[32:]], probes=2, seed=1)
    assert a != fitter.evaluate([X[:32], X[32:]], probes=2, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(block.parameters(), params))
    assert torch.equal(step_rng.get_state(), rng) and str(fitter.optimizer.state_dict()) == state
    assert len(fitter.history) == 3
    for bad, match in [(dict(probes=0), "probes"), (dict(probes=True), "probes")]:
        with pytest.raises(ValueError, match=match):
            fitter.evaluate([X], **bad)
    with pytest.raises(ValueError, match="batches"):
        fitter.evaluate([])


def test_early_stopping_ends_at_the_best_validated_lambda():
    _, _, curv, block = _float64_problem()
    X = least_squares(n_in=5, m=3, N=256, seed=3)[0].double()
    fitter = AuxFitter([block], curv.fvp, 0.05, lr=1e-2, generator=torch.Generator().manual_seed(0))
    scripted = [5.0, 3.0, 4.0, 1.0, float("nan"), 2.0]  # validated at steps 0, 4, 8, 12, 16, 18
    seen = []

    def validate():
        seen.append([p.detach().clone() for p in block.parameters()])
        return scripted[len(seen) - 1]

    losses = fitter.run(batches(X, size=32), 18, validate=validate, validate_every=4)
    assert len(losses) == 18 and len(fitter.history) == 18
    assert [s for s, _ in fitter.validation] == [0, 4, 8, 12, 16, 18]
    assert all(torch.equal(p, q) for p, q in zip(block.parameters(), seen[3])), "λ is the one validated best"
    assert not all(torch.equal(p, q) for p, q in zip(seen[-1], seen[3]))
    # a run whose start validates best ends where it started
    start = [p.detach().clone() for p in block.parameters()]
    values = iter([0.0, 1.0, 2.0])
    fitter.run(batches(X, size=32), 6, validate=lambda: next(values), validate_every=3)
    assert all(torch.equal(p, q) for p, q in zip(block.parameters(), start))


@pytest.mark.parametrize("factored", [False, True])
def test_without_learn_scaling_a_stays_and_r_l_take_the_same_first_step(monkeypatch, factored):
    """learn_scaling=False keeps A bit for bit (Q stays G_R ⊗ G_L around it); R and L take, on the first step, exactly
    the step they take when A is learnt too (Adam's step on them reads only their own gradients)."""
    from fls_kernels.curvature import fitter as fitter_module

    monkeypatch.setattr(fitter_module, "factored", lambda m, n: factored)
    X, layer, curv, _ = _float64_problem(seed=3)
    runs = {}
    for learn in (True, False):
        block = KronBlock(3, 6, dtype=torch.float64)
        with torch.no_grad():
            g = torch.Generator().manual_seed(5)
            block.R.add_(0.1 * torch.randn(3, 3, generator=g, dtype=torch.float64))
            block.L.add_(0.1 * torch.randn(6, 6, generator=g, dtype=torch.float64))
            block.A.uniform_(0.5, 1.5, generator=g)
        start = [p.detach().clone() for p in (block.R, block.L, block.A)]
        fitter = AuxFitter([block], curv.fvp, 1e-2, generator=torch.Generator().manual_seed(6), learn_scaling=learn)
        assert len(fitter.params) == (3 if learn else 2)
        fitter.run(batches(X, 16), 1)
        runs[learn] = (start, [p.detach().clone() for p in (block.R, block.L, block.A)])
    (start, learnt), (_, frozen) = runs[True], runs[False]
    assert torch.equal(frozen[2], start[2]) and not torch.equal(learnt[2], start[2])
    for k in (0, 1):
        assert not torch.equal(frozen[k], start[k])
        torch.testing.assert_close(frozen[k], learnt[k], rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="learn_scaling"):
        AuxFitter([KronBlock(3, 6)], curv.fvp, 1e-2, learn_scaling=1)


@pytest.mark.parametrize("factored", [False, True])
def test_triangular_steps_keep_the_cholesky_factors_and_take_the_full_steps_on_their_triangles(monkeypatch, factored):
    """triangular=True: from K-FAC's Cholesky start, every step keeps R upper- and L lower-triangular exactly (the
    full parameterisation fills the other triangles); on the first step the kept triangles move exactly as the full
    R and L do there (Adam's step is entrywise), and A's step is the same."""
    from fls_kernels.curvature import fitter as fitter_module

    monkeypatch.setattr(fitter_module, "factored", lambda m, n: factored)
    X, layer, curv, _ = _float64_problem(seed=4)
    g = torch.Generator().manual_seed(7)
    act, grad = torch.randn(6, 9, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    runs = {}
    for triangular in (False, True):
        block = KronBlock(3, 6, dtype=torch.float64)
        block.init_kfac(act @ act.T / 9, grad @ grad.T / 5, 1e-2)
        start = [p.detach().clone() for p in (block.R, block.L, block.A)]
        assert torch.equal(start[0], start[0].triu()) and torch.equal(start[1], start[1].tril())
        fitter = AuxFitter([block], curv.fvp, 1e-2, generator=torch.Generator().manual_seed(8), triangular=triangular)
        fitter.run(batches(X, 16), 1)
        first = [p.detach().clone() for p in (block.R, block.L, block.A)]
        fitter.run(batches(X, 16, seed=2), 4)
        runs[triangular] = start, first, (block.R.detach().clone(), block.L.detach().clone())
    (start, full, (R_full, L_full)), (_, tri, (R_tri, L_tri)) = runs[False], runs[True]
    assert torch.equal(R_tri, R_tri.triu()) and torch.equal(L_tri, L_tri.tril())
    assert not torch.equal(R_tri, start[0]) and not torch.equal(L_tri, start[1])
    assert not torch.equal(R_full, R_full.triu()) and not torch.equal(L_full, L_full.tril())
    torch.testing.assert_close(tri[0], full[0].triu(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tri[1], full[1].tril(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tri[2], full[2], rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="triangular"):
        AuxFitter([KronBlock(3, 6)], curv.fvp, 1e-2, triangular=1)


def test_annealing_steps_gamma_down_geometrically_and_validates_at_gamma():
    """``anneal`` c: step t of n at γ·c^(1 − t/(n − 1)), c·γ first and γ last; every validation and γ after the
    run at γ; c = 1 takes the steps of no annealing bit for bit."""
    _, _, curv, block = _float64_problem()
    X = least_squares(n_in=5, m=3, N=256, seed=3)[0].double()
    gamma, c, steps = 0.05, 100.0, 5
    fitter = AuxFitter([block], curv.fvp, gamma, lr=1e-2, generator=torch.Generator().manual_seed(0))
    stepped, validated = [], []
    fvp = fitter.fvp
    fitter.fvp = lambda batch, vs: stepped.append(fitter.damping) or fvp(batch, vs)
    fitter.run(
        batches(X, size=32), steps, anneal=c, validate=lambda: validated.append(fitter.damping) or 0.0, validate_every=2
    )
    expected = [gamma * c ** (1 - t / (steps - 1)) for t in range(steps)]
    assert stepped == pytest.approx(expected, rel=1e-12) and stepped[0] == pytest.approx(c * gamma)
    assert validated == [gamma] * 4 and fitter.damping == gamma  # steps 0, 2, 4, 5
    # the annealed steps differ from plain ones; c = 1 is plain
    runs = []
    for anneal in (None, 1.0, 4.0):
        _, _, curv, block = _float64_problem()
        fitter = AuxFitter([block], curv.fvp, gamma, lr=1e-2, generator=torch.Generator().manual_seed(0))
        fitter.run(batches(X, size=32), steps, **({} if anneal is None else dict(anneal=anneal)))
        runs.append([p.detach().clone() for p in block.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(runs[0], runs[1]))
    assert not all(torch.equal(p, q) for p, q in zip(runs[0], runs[2]))
    for bad, error in [(0.5, ValueError), (float("inf"), ValueError), (True, TypeError), ("2", TypeError)]:
        with pytest.raises(error, match="anneal"):
            fitter.run(batches(X, size=32), 1, anneal=bad)
    assert len(fitter.history) == steps, "a refused run takes no step"
