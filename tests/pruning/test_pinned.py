"""Every method's masks and weights on short seeded runs equal the pinned ones (``pinned.pt``).

Masks must match exactly; weights and aux losses to float rounding (bit-identical on the machine that wrote
them; ``FLS_PIN_EXACT=1`` demands bit equality).
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.pruning.pinned import GOLDEN, SCENARIOS

EXACT = os.environ.get("FLS_PIN_EXACT", "0") == "1"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def test_every_scenario_is_pinned(golden):
    assert set(golden) == set(SCENARIOS)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_pinned_masks_and_weights(name, golden):
    want, got = golden[name], SCENARIOS[name]()
    assert got["masks"].keys() == want["masks"].keys()
    for k, m in want["masks"].items():
        assert torch.equal(got["masks"][k], m), f"{name}: mask of {k} differs"
    assert got["sparsity"] == want["sparsity"]
    assert got["weights"].keys() == want["weights"].keys()
    for k, w in want["weights"].items():
        if EXACT:
            assert torch.equal(got["weights"][k], w), f"{name}: {k} differs"
        else:
            tol = 1e-12 if w.dtype == torch.float64 else 1e-5
            torch.testing.assert_close(got["weights"][k], w, rtol=tol, atol=tol, msg=f"{name}: {k}")
        assert torch.equal(got["weights"][k] == 0, w == 0), f"{name}: zeros of {k} differ"
    assert ("history" in got) == ("history" in want)
    if "history" in want:
        assert got["history"] == (want["history"] if EXACT else pytest.approx(want["history"], rel=1e-4))
