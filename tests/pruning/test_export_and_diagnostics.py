"""Export to semi-structured sparsity, the per-layer report, memory usage and its dry-run estimate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels.pruning import is_two_four
from tests.pruning.helpers import SmallNet, make


def two_four_model(device="cpu", dtype=torch.float32):
    model = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32)).to(device=device, dtype=dtype)
    pruner = fls.MagnitudePruner(model, pattern="2:4")
    pruner.prune()
    pruner.finalize()
    return model


def test_export_errors_are_clear_off_gpu_and_on_non_two_four_layers():
    model = two_four_model()
    assert all(is_two_four(m.weight) for m in (model[0], model[2]))
    with pytest.raises(RuntimeError, match="compute capability"):
        fls.export_semi_structured(model)
    with pytest.raises(ValueError, match="no 2:4-sparse"):
        fls.export_semi_structured(nn.Sequential(nn.Linear(8, 4)))
    with pytest.raises(ValueError, match="layers"):
        fls.export_semi_structured(model, layers=["1"])
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.layout == torch.strided


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0), reason="needs CUDA sm80+"
)
def test_export_on_gpu_matches_dense_output():
    model = two_four_model("cuda", torch.float16)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    dense = model(x)
    assert fls.export_semi_structured(model) == ["0", "2"]
    torch.testing.assert_close(model(x), dense, rtol=1e-2, atol=1e-2)


def test_report_lists_every_layer_and_the_total():
    pruner = make("magnitude", SmallNet())
    pruner.prune(0.5)
    text = pruner.report()
    for name in ("conv", "fc1", "fc2", "total"):
        assert name in text
    (total,) = [line for line in text.splitlines() if line.startswith("total")]
    assert f"{pruner.num_pruned()}" in total
    assert text.splitlines()[-1] == f"model sparsity (all weights): {pruner.model_sparsity():.4f}"


def test_memory_usage_matches_the_dry_run_estimate():
    model = SmallNet()
    estimate = fls.FishLegPruner.estimate_memory(model)
    pruner = make("fls", model)
    usage = pruner.memory_usage()
    assert usage["lambda"] == estimate["lambda"] == sum(p.numel() * 4 for p in pruner.method.blocks.parameters())
    assert usage["masks"] == estimate["masks"] == pruner.num_prunable()
    assert usage["optimizer"] == estimate["optimizer"]
    assert usage["total"] == sum(v for k, v in usage.items() if k != "total")
    assert make("obert", SmallNet()).memory_usage()["fisher_inverse"] > 0
