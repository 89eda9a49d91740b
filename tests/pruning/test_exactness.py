"""Exact sparsity and exact zeros: after prune, optimizer steps, reloads; masks never shrink."""

from __future__ import annotations

import math

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import KINDS, SmallNet, expected_zeros, loader, make, prunable_weights


def check_exact(pruner, expected_zeros: int | None = None):
    total = 0
    for name, w in prunable_weights(pruner).items():
        mask = pruner.masks[name]
        assert mask.shape == w.shape
        assert (w[~mask] == 0).all() and not torch.signbit(w[~mask]).any(), f"{name}: pruned weights must be +0"
        assert (w[mask] != 0).all(), f"{name}: a surviving weight is zero"
        total += int((w == 0).sum())
    assert total == pruner.num_pruned()
    if expected_zeros is not None:
        assert total == expected_zeros


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("substeps", [1, 3])
def test_default_allocation_is_exact(kind, substeps):
    pruner = make(kind, SmallNet())
    d = pruner.num_prunable()
    for s in (0.3, 0.7, 0.71):
        reached = pruner.prune(s, substeps=substeps)
        check_exact(pruner, expected_zeros(pruner, s))
        assert reached == pytest.approx(expected_zeros(pruner, s) / d)


@pytest.mark.parametrize("kind", KINDS)
def test_uniform_and_per_layer_allocation(kind):
    pruner = make(kind, SmallNet(), allocation="uniform")
    pruner.prune(0.5, substeps=2)
    for name, w in prunable_weights(pruner).items():
        assert int((w == 0).sum()) == math.ceil(0.5 * w.numel()), name
    pruner.prune({"fc1": 0.9}, substeps=2)
    pruned = {name: int((~m).sum()) for name, m in pruner.masks.items()}
    sizes = {name: w.numel() for name, w in prunable_weights(pruner).items()}
    assert pruned == {
        "conv": math.ceil(0.5 * sizes["conv"]),
        "fc1": math.ceil(0.9 * sizes["fc1"]),
        "fc2": math.ceil(0.5 * sizes["fc2"]),
    }
    check_exact(pruner)


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_weights_never_come_back(kind):
    pruner = make(kind, SmallNet())
    pruner.prune(0.4, substeps=2)
    first = {k: m.clone() for k, m in pruner.masks.items()}
    pruner.prune(0.8, substeps=2)
    for k, m in pruner.masks.items():
        assert not (m & ~first[k]).any(), "a pruned weight was revived"


def test_fls_compensates_surviving_weights_and_magnitude_does_not():
    torch.manual_seed(1)
    model_f, model_m = SmallNet(), SmallNet()
    model_m.load_state_dict(model_f.state_dict())
    before = {k: v.clone() for k, v in model_f.state_dict().items()}
    f, m = make("fls", model_f), make("magnitude", model_m)
    f.prune(0.5)
    m.prune(0.5)
    moved_f = sum(int(((model_f.state_dict()[k] != before[k]) & (model_f.state_dict()[k] != 0)).sum()) for k in before)
    moved_m = sum(int(((model_m.state_dict()[k] != before[k]) & (model_m.state_dict()[k] != 0)).sum()) for k in before)
    assert moved_f > 0 and moved_m == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "make_opt",
    [
        pytest.param(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3), id="sgd-momentum"),
        pytest.param(lambda p: torch.optim.Adam(p, lr=1e-2), id="adam"),
        pytest.param(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), id="adamw"),
    ],
)
def test_zeros_survive_optimizer_steps(kind, make_opt):
    model = SmallNet()
    opt = make_opt(model.parameters())
    data = loader()

    def train(steps):
        for x, y in data[:steps]:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    train(2)  # momentum / Adam moments exist before pruning
    pruner = make(kind, model)
    pruner.prune(0.6)
    train(3)
    check_exact(pruner, expected_zeros(pruner, 0.6))
    for v in pruner.views:
        mask = pruner.masks[v.name]
        assert (v.weight.grad[~mask] == 0).all()
        for value in opt.state[v.weight].values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert (value[~mask] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_reload_restores_masks_and_zeros(kind):
    model = SmallNet()
    pruner = make(kind, model)
    pruner.prune(0.75, substeps=2)
    model_state, pruner_state = model.state_dict(), pruner.state_dict()

    fresh = SmallNet()
    other = make(kind, fresh)
    fresh.load_state_dict(model_state)
    other.load_state_dict(pruner_state)
    check_exact(other, expected_zeros(other, 0.75))
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    # Loading dense weights into a pruned model keeps the pruned entries at zero.
    fresh.load_state_dict(SmallNet().state_dict())
    for name, w in prunable_weights(other).items():
        assert (w[~other.masks[name]] == 0).all()
    if kind == "fls":
        for a, b in zip(pruner.method.blocks.parameters(), other.method.blocks.parameters()):
            assert torch.equal(a, b)
        assert other.method.damping == pruner.method.damping


def test_finalize_bakes_zeros_and_removes_hooks():
    model = SmallNet()
    pruner = make("magnitude", model)
    pruner.prune(0.5)
    out = pruner.finalize()
    assert out is model
    assert not pruner.masks.attached
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = loader()[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # no hook re-zeroes any more
    assert any((v.weight == 0).sum() < (~pruner.masks[v.name]).sum() for v in pruner.views)
    with pytest.raises(RuntimeError, match="finalized"):
        pruner.prune(0.6)


def test_layer_selection_by_type_regex_and_ignore():
    model = SmallNet()
    assert fls.MagnitudePruner(model, layer_types=(torch.nn.Linear,)).layer_names == ["fc1", "fc2"]
    assert fls.MagnitudePruner(model, ignore=["fc2"]).layer_names == ["conv", "fc1"]
    assert fls.MagnitudePruner(model, include=r"fc\d").layer_names == ["fc1", "fc2"]


def test_restoring_a_checkpoint_before_pruning_restores_the_dense_model():
    """Pruner state first (all masks alive), then the weights: the model is dense again and re-prunable."""
    model = SmallNet()
    pruner = make("fls", model)
    dense_weights = {k: v.clone() for k, v in model.state_dict().items()}
    dense_state = pruner.state_dict()
    pruner.prune(0.7, substeps=2)
    pruner.load_state_dict(dense_state)
    model.load_state_dict(dense_weights)
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_weights[k])
    assert pruner.num_pruned() == 0
    pruner.prune(0.5)
    check_exact(pruner, math.ceil(0.5 * pruner.num_prunable()))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_a_pruner_on_a_preferred_backend_prunes_exactly(backend):
    """Ops the backend lacks (Triton has no select_smallest) run on the automatic choice."""
    why = fls.backends.get_backend(backend).load()
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    pruner = make("fls", SmallNet(), backend=backend)
    pruner.prune(0.6, substeps=2)
    check_exact(pruner, expected_zeros(pruner, 0.6))


def test_an_unavailable_backend_raises_with_the_reason():
    with pytest.raises(ValueError, match="backend"):
        fls.MagnitudePruner(SmallNet(), backend="nope")
    if fls.backends.get_backend("cuda").load() is not None:
        pruner = fls.MagnitudePruner(SmallNet(), backend="cuda")
        with pytest.raises(fls.BackendUnavailableError, match="cuda"):
            pruner.prune(0.5)
