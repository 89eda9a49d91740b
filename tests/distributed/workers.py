"""Scenarios run by every rank of a gloo group (spawned by the tests) and, on the union of the ranks' data, by
one process; each returns what the tests compare: masks, weights, λ, losses, memory."""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

import fls_kernels as fls
from fls_kernels.distributed import Distributed, RankFailure
from fls_kernels.pruning.methods.fishleg import FishLeg
from fls_kernels.testing import install_poison

DTYPE = torch.float64


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 12), nn.Tanh(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5)).to(DTYPE)


def rows(world: int) -> list[int]:
    """Batch rows per rank: unequal, so the weighting by batch size is exercised."""
    return [6 + 2 * r for r in range(world)]


def union_batches(world: int, count: int = 4) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """batches[b][r]: rank r's part of union batch b."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        parts = []
        for n in rows(world):
            x = torch.randn(n, 7, generator=gen, dtype=DTYPE)
            parts.append((x, torch.randint(0, 5, (n,), generator=gen)))
        out.append(parts)
    return out


def loader(world: int, rank: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank ``rank``'s batches, or (None) the union batches of one process."""
    batches = union_batches(world)
    if rank is not None:
        return [b[rank] for b in batches]
    return [(torch.cat([p[0] for p in b]), torch.cat([p[1] for p in b])) for b in batches]


def _result(pruner: fls.Pruner, net: nn.Module, **extra) -> dict:
    out = {
        "masks": {k: m.clone() for k, m in pruner.masks.items()},
        "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "memory": pruner.memory_usage(),
    }
    blocks = getattr(pruner, "blocks", None)
    if blocks is not None:
        out["lambda"] = {k: v.clone() for k, v in blocks.state_dict().items()}
    out.update(extra)
    return out


def fls_run(world: int, rank: int | None, mode: str | None, **kw) -> dict:
    net = model()
    pruner = fls.FishLegPruner(net, distributed=Distributed(mode) if mode else None, refine_steps=5, **kw)
    losses = pruner.fit(loader(world, rank), steps=12)
    state, weights = pruner.state_dict(), copy.deepcopy(net.state_dict())
    pruner.prune(0.6, substeps=3)
    result = _result(pruner, net, losses=losses)
    # a checkpoint of this rank resumes to the same step; another sharding is refused with a ValueError
    pruner.load_state_dict(state)
    net.load_state_dict(weights)
    pruner.prune(0.6, substeps=3)
    result["resumed_equal"] = all(torch.equal(v, net.state_dict()[k]) for k, v in result["weights"].items())
    other = fls.FishLegPruner(model(), distributed=Distributed("replicated") if mode == "sharded" else None)
    try:
        other.load_state_dict(state)
        result["foreign_state"] = "loaded"
    except ValueError as exc:
        result["foreign_state"] = f"ValueError: {exc}"
    return result


def kfac_run(world: int, rank: int | None, mode: str | None, **kw) -> dict:
    net = model()
    pruner = fls.KFACPruner(net, distributed=Distributed(mode) if mode else None, stat_batches=3, **kw)
    pruner.fit(loader(world, rank))
    pruner.prune(0.7, substeps=2)
    return _result(pruner, net)


def baseline_run(world: int, rank: int | None, mode: str | None, method: str) -> dict:
    net = model()
    kw = {"distributed": Distributed(mode) if mode else None}
    if method == "oBERT":
        pruner = fls.OBERTPruner(net, num_grads=20, block_size=6, **kw)
    elif method == "OBD":
        pruner = fls.OBDPruner(net, stat_batches=3, **kw)
    elif method == "SparseGPT":
        pruner = fls.SparseGPTPruner(net, blocksize=8, calib_batches=3, **kw)
    elif method == "Wanda":
        pruner = fls.WandaPruner(net, calib_batches=3, **kw)
    else:
        pruner = fls.CoresetPruner(net, calib_batches=3, **kw)
    pruner.fit(loader(world, rank))
    pruner.prune(0.5, substeps=2)
    return _result(pruner, net)


def nm_run(world: int, rank: int | None, mode: str | None) -> dict:
    """2:4 along the inputs needs input widths divisible by 4: a model of its own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 5)).to(DTYPE)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(sum(rows(world)), 8, generator=gen, dtype=DTYPE) for _ in range(3)]
    if rank is not None:
        start = sum(rows(world)[:rank])
        xs = [x[start : start + rows(world)[rank]] for x in xs]
    pruner = fls.FishLegPruner(net, pattern="2:4", distributed=Distributed(mode) if mode else None, refine_steps=3)
    pruner.fit(xs, steps=6)
    pruner.prune(substeps=2)
    return _result(pruner, net)


class _FailingFishLeg(FishLeg):
    """Raises on ``fail_rank`` in the updates of the second sub-step."""

    def __init__(self, *args, fail_rank: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_rank, self.substeps_seen = fail_rank, 0

    def before_substep(self, substep):
        self.substeps_seen += 1
        super().before_substep(substep)

    def update(self, index, W, prune, keep):
        if dist.get_rank() == self.fail_rank and self.substeps_seen >= 2:
            raise RuntimeError("injected failure")
        super().update(index, W, prune, keep)


class _FailingFLS(fls.FishLegPruner):
    method_class = _FailingFishLeg


def failure_run(world: int, rank: int, mode: str) -> dict:
    net = model()
    pruner = _FailingFLS(net, distributed=Distributed(mode), refine_steps=2, fail_rank=world - 1)
    pruner.fit(loader(world, rank), steps=4)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state = pruner.state_dict()
    try:
        pruner.prune(0.5, substeps=3)
    except RankFailure as exc:
        error = f"RankFailure: {exc}"
    except RuntimeError as exc:
        error = f"RuntimeError: {exc}"
    else:
        error = None
    after = {k: v.detach().clone() for k, v in net.state_dict().items()}
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    masks_unchanged = all(torch.equal(state["masks"][k], m) for k, m in pruner.masks.items())
    # the pruner still works after the failed step
    pruner.method.fail_rank = -1
    pruner.prune(0.5, substeps=2)
    return {
        "error": error,
        "unchanged": unchanged and masks_unchanged,
        "sparsity": pruner.sparsity(),
        "masks": {k: m.clone() for k, m in pruner.masks.items()},
    }


def ddp_run(world: int, rank: int, mode: str) -> dict:
    """A DDP-wrapped model: prune it, then train with the masks held."""
    net = model()
    ddp = nn.parallel.DistributedDataParallel(net)
    pruner = fls.FishLegPruner(ddp, distributed=Distributed(mode), refine_steps=2)
    pruner.fit(loader(world, rank), steps=4)
    pruner.prune(0.5, substeps=2)
    result = _result(pruner, net)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    for x, y in loader(world, rank):
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    zeros_held = all(bool((net.state_dict()[f"{k}.weight"][~m] == 0).all()) for k, m in pruner.masks.items())
    return {**result, "zeros_held": zeros_held}


def fsdp_run(world: int, rank: int, mode: str) -> dict:
    """An FSDP-wrapped model, pruned one-shot inside summon_full_params(writeback=True), then re-sharded."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    net = model()
    wrapped = FSDP(net, device_id=torch.device("cpu"), use_orig_params=True)
    with FSDP.summon_full_params(wrapped, writeback=True):
        pruner = fls.FishLegPruner(wrapped, distributed=Distributed(mode), refine_steps=2)
        pruner.fit(loader(world, rank), steps=4)
        pruner.prune(0.5, substeps=2)
        pruner.finalize()
    with FSDP.summon_full_params(wrapped):
        weights = {k.replace("_fsdp_wrapped_module.", ""): v.detach().clone() for k, v in wrapped.state_dict().items()}
    masks = {k: m.clone() for k, m in pruner.masks.items()}
    return {
        "masks": masks,
        "weights": weights,
        "lambda": {k: v.clone() for k, v in pruner.method.blocks.state_dict().items()},
    }


def gradual_run(world: int, rank: int | None, mode: str | None) -> dict:
    """Gradual pruning: Adam on the union batches (the same on every rank), pruner.step() on a schedule, λ
    tracking the fine-tuned model on each rank's own batches between prunes."""
    net = model()
    schedule = fls.CubicSchedule(0.3, 0.7, start=0, end=6, every=2)
    pruner = fls.FishLegPruner(
        net, schedule=schedule, substeps=2, refine_steps=2, distributed=Distributed(mode) if mode else None
    )
    pruner.fit(loader(world, rank), steps=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in loader(world, None) * 2:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        pruner.step()
    return _result(pruner, net)


def select_run(world: int, rank: int) -> dict:
    """The sharded selection on scores with ties, ±0, −inf and +inf, layers dealt round-robin to ranks."""
    from fls_kernels.distributed import select as dselect

    gen = torch.Generator().manual_seed(7)
    scores = []
    for n in (17, 1, 40, 3, 64, 9):
        s = torch.randint(-3, 4, (n,), generator=gen).to(torch.float32) / 2
        s[torch.rand(n, generator=gen) < 0.1] = float("inf")
        scores.append(s)
    scores[0][0], scores[2][1], scores[4][5] = -0.0, 0.0, float("-inf")
    comm = fls.distributed.Comm()
    out = {}
    for k in (0, 1, 13, 57, sum(int((s < float("inf")).sum()) for s in scores)):
        mine = [s if i % world == rank else None for i, s in enumerate(scores)]
        out[k] = {i: c for i, c in enumerate(dselect.select_smallest(mine, k, comm)) if c is not None}
    return {"scores": scores, "chosen": out}


SCENARIOS: dict[str, Callable[[int, int], dict]] = {
    "fls_replicated": lambda w, r: fls_run(w, r, "replicated"),
    "fls_sharded": lambda w, r: fls_run(w, r, "sharded"),
    "fls_sharded_kfac_init": lambda w, r: fls_run(w, r, "sharded", init="kfac"),
    "kfac_sharded": lambda w, r: kfac_run(w, r, "sharded"),
    "kfac_replicated_label_samples": lambda w, r: kfac_run(w, r, "replicated", label_samples=3),
    "obd_replicated": lambda w, r: baseline_run(w, r, "replicated", "OBD"),
    "obert_replicated": lambda w, r: baseline_run(w, r, "replicated", "oBERT"),
    "coreset_replicated": lambda w, r: baseline_run(w, r, "replicated", "coreset"),
    "sparsegpt_replicated": lambda w, r: baseline_run(w, r, "replicated", "SparseGPT"),
    "wanda_replicated": lambda w, r: baseline_run(w, r, "replicated", "Wanda"),
    "nm_sharded": lambda w, r: nm_run(w, r, "sharded"),
    "failure_replicated": lambda w, r: failure_run(w, r, "replicated"),
    "failure_sharded": lambda w, r: failure_run(w, r, "sharded"),
    "ddp": lambda w, r: ddp_run(w, r, "sharded"),
    "fsdp": lambda w, r: fsdp_run(w, r, "replicated"),
    "gradual_sharded": lambda w, r: gradual_run(w, r, "sharded"),
    "select": select_run,
}

SINGLE: dict[str, Callable[[int], dict]] = {
    "fls_replicated": lambda w: fls_run(w, None, None),
    "fls_sharded": lambda w: fls_run(w, None, None),
    "fls_sharded_kfac_init": lambda w: fls_run(w, None, None, init="kfac"),
    "kfac_sharded": lambda w: kfac_run(w, None, None),
    "kfac_replicated_label_samples": lambda w: kfac_run(w, None, None, label_samples=3),
    "obd_replicated": lambda w: baseline_run(w, None, None, "OBD"),
    "obert_replicated": lambda w: baseline_run(w, None, None, "oBERT"),
    "coreset_replicated": lambda w: baseline_run(w, None, None, "coreset"),
    "sparsegpt_replicated": lambda w: baseline_run(w, None, None, "SparseGPT"),
    "wanda_replicated": lambda w: baseline_run(w, None, None, "Wanda"),
    "nm_sharded": lambda w: nm_run(w, None, None),
    "ddp": lambda w: fls_run_ddp_single(w),
    "fsdp": lambda w: fls_run_ddp_single(w),
    "gradual_sharded": lambda w: gradual_run(w, None, None),
}


def fls_run_ddp_single(world: int) -> dict:
    net = model()
    pruner = fls.FishLegPruner(net, refine_steps=2)
    pruner.fit(loader(world, None), steps=4)
    pruner.prune(0.5, substeps=2)
    return _result(pruner, net)


def worker(rank: int, world: int, store: str, out_dir: str, names: list[str]) -> None:
    """One rank: run ``names`` in order and save {name: result} to out_dir/rank{rank}.pt."""
    torch.set_num_threads(1)
    if os.environ.get("FLS_POISON", "1") == "1":  # as the test session's conftest does
        install_poison()
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        results = {}
        for name in names:
            try:
                results[name] = SCENARIOS[name](world, rank)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not swallowed
                results[name] = {"exception": f"{type(exc).__name__}: {exc}"}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
