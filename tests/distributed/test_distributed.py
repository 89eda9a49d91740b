"""Distributed fitting and pruning on 2 and 3 gloo processes equal one process on the union of their data."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.distributed import workers

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

NAMES = list(workers.SCENARIOS)
WORLDS = (2, 3)


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def runs(request) -> tuple[int, list[dict]]:
    """Every scenario on ``world`` spawned gloo ranks (once per world size): per rank {name: result}."""
    world = request.param
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(workers.worker, args=(world, f"{tmp}/store", tmp, NAMES), nprocs=world, join=True)
        return world, [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _ok(result: dict) -> dict:
    assert "exception" not in result, result.get("exception")
    return result


def _same_everywhere(results: list[dict]) -> None:
    first = results[0]
    for other in results[1:]:
        for k, m in first["masks"].items():
            assert torch.equal(m, other["masks"][k]), k
        for k, w in first["weights"].items():
            assert torch.equal(w, other["weights"][k]), k


@pytest.mark.parametrize(
    "name",
    [
        "fls_replicated",
        "fls_sharded",
        "fls_sharded_kfac_init",
        "kfac_sharded",
        "kfac_replicated_label_samples",
        "obd_replicated",
        "obert_replicated",
        "coreset_replicated",
        "sparsegpt_replicated",
        "wanda_replicated",
        "nm_sharded",
        "ddp",
        "fsdp",
        "gradual_sharded",
    ],
)
def test_distributed_equals_one_process_on_the_union(runs, name):
    world, per_rank = runs
    results = [_ok(r[name]) for r in per_rank]
    _same_everywhere(results)
    single = workers.SINGLE[name](world)
    for k, m in single["masks"].items():
        assert torch.equal(results[0]["masks"][k], m), f"{name}: mask of {k} differs"
        assert not bool(m.all()), "the scenario must prune every layer"
    for k, w in single["weights"].items():
        torch.testing.assert_close(results[0]["weights"][k], w, rtol=1e-9, atol=1e-11, msg=f"{name}: {k}")
    if "losses" in single:
        torch.testing.assert_close(
            torch.tensor(results[0]["losses"], dtype=torch.float64), torch.tensor(single["losses"], dtype=torch.float64)
        )
    if "lambda" in single:  # sharded: each block on exactly one rank; replicated: on every rank
        merged = {}
        for r in results:
            for k, v in r["lambda"].items():
                assert "sharded" not in name or k not in merged, f"{name}: block {k} on two ranks"
                merged[k] = v
        assert set(merged) == set(single["lambda"])
        for k, v in single["lambda"].items():
            torch.testing.assert_close(merged[k], v, rtol=1e-8, atol=1e-10, msg=f"{name}: λ {k}")


def test_checkpoints_resume_on_their_rank_and_refuse_another_sharding(runs):
    _, per_rank = runs
    for name in ("fls_replicated", "fls_sharded"):
        for r in per_rank:
            result = _ok(r[name])
            assert result["resumed_equal"], name
            if name == "fls_sharded":
                assert result["foreign_state"].startswith("ValueError: state_dict: saved for layer owners")
            else:
                assert result["foreign_state"] == "loaded"  # replicated state holds every block


def test_sharded_memory_is_split_over_ranks(runs):
    world, per_rank = runs
    single = workers.SINGLE["fls_sharded"](world)["memory"]
    per = [_ok(r["fls_sharded"])["memory"] for r in per_rank]
    replicated = [_ok(r["fls_replicated"])["memory"] for r in per_rank]
    for key in ("lambda", "optimizer"):
        assert sum(m[key] for m in per) == single[key]  # every block once
        assert all(m[key] == single[key] for m in replicated)  # every block everywhere
        assert max(m[key] for m in per) < single[key]
    # balanced: the largest share is at most the biggest layer's share above an even split
    assert max(m["lambda"] for m in per) <= 0.75 * single["lambda"]


def test_a_rank_failing_mid_step_leaves_every_model_unchanged(runs):
    world, per_rank = runs
    for name in ("failure_replicated", "failure_sharded"):
        results = [_ok(r[name]) for r in per_rank]
        for rank, r in enumerate(results):
            assert r["unchanged"], f"{name}: rank {rank} changed its model"
            if rank == world - 1:
                assert r["error"].startswith("RuntimeError: injected failure"), r["error"]
            else:
                assert r["error"].startswith("RankFailure"), r["error"]
            assert r["sparsity"] == pytest.approx(0.5, abs=0.02)
        for k, m in results[0]["masks"].items():
            assert all(torch.equal(m, r["masks"][k]) for r in results[1:]), f"{name}: ranks diverged after recovery"


def test_ddp_wrapped_model_keeps_its_masks_through_training(runs):
    _, per_rank = runs
    for r in per_rank:
        assert _ok(r["ddp"])["zeros_held"]


def test_sharded_selection_matches_the_single_process_rule(runs):
    world, per_rank = runs
    from fls_kernels import ops

    scores = per_rank[0]["select"]["scores"]
    for k in per_rank[0]["select"]["chosen"]:
        expected = ops.select_smallest(scores, k, backend="reference")
        got = {}
        for r in per_rank:
            got.update(r["select"]["chosen"][k])
        assert sorted(got) == list(range(len(scores)))
        for i, e in enumerate(expected):
            assert torch.equal(got[i], e), f"k={k}, layer {i}"
