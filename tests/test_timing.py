"""The prune-time split: every section is recorded, nested time goes to the innermost, nothing leaks out."""

from __future__ import annotations

import time

import fls_kernels as fls
from fls_kernels import timing
from tests.pruning.helpers import SmallNet, loader


def test_record_splits_a_whole_prune_into_sections():
    pruner = fls.FishLegPruner(SmallNet(), init_batches=1, refine_steps=3)
    start = time.perf_counter()
    with timing.record() as times:
        pruner.fit(loader(), steps=4)
        pruner.prune(0.6, substeps=2)
    total = time.perf_counter() - start
    assert set(times) == {"statistics", "fvp", "q_products", "scoring", "selection", "update"}
    assert all(v > 0 for v in times.values())
    assert sum(times.values()) <= total
    with timing.record() as again:
        pass
    assert dict(again) == {}


def test_sections_nest_and_are_free_outside_record():
    with timing.section("ignored"):
        pass
    with timing.record() as times:
        with timing.section("outer"):
            time.sleep(0.02)
            with timing.section("inner"):
                time.sleep(0.03)
    assert 0.02 <= times["outer"] < 0.03 + 0.02
    assert times["inner"] >= 0.03
