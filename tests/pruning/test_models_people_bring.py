"""Models as users bring them: outputs that are not tensors, re-used modules, non-finite data and weights,
weights no pruner can prune — each handled, or refused with an error naming the cause."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels.data import model_output
from tests.pruning.helpers import KINDS, SmallNet, assert_identical, expected_zeros, loader, make, snapshot

CURVATURE = ["fls", "obd", "obert", "kfac"]  # the methods that read the model's output


@dataclass
class Out:
    logits: torch.Tensor


class Wrapped(SmallNet):
    """SmallNet whose forward returns ``kind`` of output."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        y = super().forward(x)
        return {"tuple": (y, x.sum()), "dataclass": Out(y), "mapping": {"logits": y, "aux": 0}}[self.kind]


@pytest.mark.parametrize("kind", ["tuple", "dataclass", "mapping"])
@pytest.mark.parametrize("method", CURVATURE)
def test_outputs_that_are_not_tensors_are_read(kind, method):
    torch.manual_seed(0)
    pruner = make(method, Wrapped(kind))
    pruner.prune(0.6)
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)


def test_model_output_reads_transformers_outputs_and_names_output_eq():
    transformers = pytest.importorskip("transformers")
    h = torch.randn(2, 3, 4)
    assert model_output(transformers.modeling_outputs.BaseModelOutput(last_hidden_state=h)) is h
    logits = torch.randn(2, 5)
    out = transformers.modeling_outputs.SequenceClassifierOutput(logits=logits, hidden_states=(h,))
    assert model_output(out) is logits
    with pytest.raises(TypeError, match="pass output="):
        model_output(object())
    with pytest.raises(TypeError, match="pass output="):
        model_output(("not a tensor",))


def test_an_unreadable_output_is_refused_naming_output_eq():
    class Odd(SmallNet):
        def forward(self, x):
            return {"scores": super().forward(x)}

    model = Odd()
    before = snapshot(model)
    pruner = fls.OBDPruner(model)
    with pytest.raises(TypeError, match="output: .*pass output="):
        pruner.fit(loader())
    assert not pruner.fitted
    assert_identical(model, before)
    fls.OBDPruner(model, output=lambda out: out["scores"]).fit(loader())  # the pointer works


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Linear(36, 36)  # called twice
        self.fc = nn.Linear(4 * 36, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(2)
        return self.fc(self.mix(torch.relu(self.mix(h))).flatten(1))


@pytest.mark.parametrize("method", KINDS)
def test_a_module_called_twice_is_pruned_exactly(method):
    torch.manual_seed(1)
    pruner = make(method, Reused())
    pruner.prune(0.7)
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.7)
    assert all(torch.isfinite(p).all() for p in pruner.model.parameters())


def _poisoned(index: int, value: float = float("nan")):
    data = loader(batches=4)
    data[index][0][3, 0, 2, 2] = value
    return data


@pytest.mark.parametrize("method", ["fls", "obd", "obert", "kfac", "coreset", "sparsegpt", "wanda"])
def test_a_non_finite_batch_is_named_and_nothing_is_fitted(method):
    model = SmallNet()
    before = snapshot(model)
    pruner = {
        "fls": lambda: fls.FishLegPruner(model, init_batches=4),
        "obd": lambda: fls.OBDPruner(model, stat_batches=4),
        "obert": lambda: fls.OBERTPruner(model, num_grads=64),
        "kfac": lambda: fls.KFACPruner(model, stat_batches=4),
        "coreset": lambda: fls.CoresetPruner(model, calib_batches=4),
        "sparsegpt": lambda: fls.SparseGPTPruner(model),
        "wanda": lambda: fls.WandaPruner(model),
    }[method]()
    with pytest.raises(ValueError, match="loader: batch 2 contains NaN/Inf in element 0"):
        pruner.fit(_poisoned(2, float("inf")), steps=2)
    assert not pruner.fitted
    assert_identical(model, before)
    with pytest.raises(RuntimeError, match="call fit"):
        pruner.prune(0.5)


def test_a_non_finite_batch_met_by_the_aux_steps_leaves_fls_unfitted():
    model = SmallNet()
    pruner = fls.FishLegPruner(model, init_batches=2)  # statistics read batches 0–1, the aux steps all four
    with pytest.raises(ValueError, match="loader: batch 3 contains NaN/Inf"):
        pruner.fit(_poisoned(3), steps=6)
    assert not pruner.fitted
    pruner.fit(loader(batches=4), steps=3)  # a clean retry works
    assert pruner.fitted


@pytest.mark.parametrize("method", ["fls", "obd", "sparsegpt"])
def test_a_non_finite_weight_is_named_before_fitting(method):
    model = SmallNet()
    with torch.no_grad():
        model.fc1.weight[2, 3] = float("nan")
    pruner = {"fls": fls.FishLegPruner, "obd": fls.OBDPruner, "sparsegpt": fls.SparseGPTPruner}[method](model)
    with pytest.raises(ValueError, match="parameter 'fc1.weight' contains NaN or Inf; nothing was fitted"):
        pruner.fit(loader())
    assert not pruner.fitted


class WithUnsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.table = nn.Parameter(torch.randn(6, 6))  # a bare matrix
        self.conv3 = nn.Conv3d(1, 1, 2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.emb(x).mean(1) @ self.table)


def test_weights_left_unpruned_are_warned_listed_and_counted(caplog):
    model = WithUnsupported()
    with caplog.at_level(logging.WARNING, logger="fls_kernels.pruning"):
        pruner = fls.MagnitudePruner(model)
    (record,) = caplog.records
    for name in ("emb.weight", "table", "conv3.weight"):
        assert name in record.getMessage()
    assert {u.name for u in pruner.unpruned} == {"emb.weight", "table", "conv3.weight"}
    assert not any(u.explicit for u in pruner.unpruned)
    pruner.prune(0.5)
    text = pruner.report()
    assert "not pruned:" in text and "Embedding.weight" in text and "Conv3d.weight" in text
    weights = [p for p in model.parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in weights)
    assert pruner.model_sparsity() == pytest.approx(zeros / sum(p.numel() for p in weights))
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.06) and pruner.model_sparsity() < 0.2


def test_explicit_exclusions_are_listed_but_not_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="fls_kernels.pruning"):
        pruner = fls.MagnitudePruner(WithUnsupported(), ignore=("conv3",), include=r"fc|conv3")
        fls.MagnitudePruner(SmallNet(), layer_types=(nn.Linear,))
    assert not caplog.records
    reasons = {u.name: u.reason for u in pruner.unpruned}
    assert all(u.explicit for u in pruner.unpruned)
    assert "include" in reasons["emb.weight"]


def test_shared_weights_are_counted_once_by_model_sparsity():
    model = WithUnsupported()
    model.fc2 = nn.Linear(6, 6)
    model.fc2.weight = model.table  # the same tensor twice
    pruner = fls.MagnitudePruner(model, ignore=("fc2",), include=r"fc")
    seen = {id(p): p for p in model.parameters() if p.dim() >= 2}  # parameters() yields shared ones once
    total = sum(p.numel() for p in seen.values())
    pruner.prune(0.5)
    assert pruner.model_sparsity() == pytest.approx(sum(int((p == 0).sum()) for p in seen.values()) / total)


class TiedNet(SmallNet):
    def __init__(self):
        super().__init__()
        self.fc3 = nn.Linear(16, 16)
        self.fc4 = nn.Linear(16, 16)
        self.fc4.weight = self.fc3.weight

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1)))
        return self.fc2(torch.relu(self.fc4(torch.relu(self.fc3(h)))))


@pytest.mark.parametrize("method", KINDS)
def test_a_shared_weight_is_one_prunable_tensor(method):
    torch.manual_seed(2)
    pruner = make(method, TiedNet())
    assert [v.name for v in pruner.views].count("fc3") == 1 and "fc4" not in pruner.layer_names
    assert pruner.num_prunable() == sum(p.numel() for n, p in pruner.model.named_parameters() if p.dim() >= 2)
    pruner.prune(0.6)
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)
    assert torch.equal(pruner.model.fc3.weight == 0, pruner.model.fc4.weight == 0)
    assert pruner.model_sparsity() == pytest.approx(pruner.sparsity())
