"""Prune one model on several processes with FishLeg Surgeon (launch with torchrun).

    torchrun --nproc-per-node 2 examples/distributed_prune.py --mode sharded
    torchrun --nproc-per-node 8 examples/distributed_prune.py --mode sharded --device cuda

Each rank reads its own calibration batches (here: its slice of every global batch). "replicated" sums λ
gradients over ranks; "sharded" gives each layer's λ to one rank, so λ and Adam's state are split over ranks.
Every rank prints its pruner memory; rank 0 prints the per-layer report and checks the masks agree everywhere.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

import fls_kernels as fls


def model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights (DDP would broadcast them instead)
    sizes = [64] + [width] * (depth + 1) + [10]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["replicated", "sharded"], default="sharded")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=6, help="hidden width×width layers")
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over ranks")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sparsity", type=float, default=0.8)
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(args.device, local_rank) if args.device == "cuda" else torch.device("cpu")
    try:
        net = model(args.width, args.depth).to(device)
        gen = torch.Generator().manual_seed(1)
        per = args.batch // world
        batches = []
        for _ in range(8):  # the global batches; this rank keeps its slice
            x, y = torch.randn(args.batch, 64, generator=gen), torch.randint(0, 10, (args.batch,), generator=gen)
            batches.append((x[rank * per : (rank + 1) * per].to(device), y[rank * per : (rank + 1) * per].to(device)))

        pruner = fls.FishLegPruner(net, distributed=fls.Distributed(args.mode), refine_steps=10)
        pruner.fit(batches, steps=args.steps)
        pruner.prune(args.sparsity, substeps=4)

        memory = {k: v / 2**20 for k, v in pruner.memory_usage().items()}
        print(f"rank {rank}/{world} ({args.mode}): " + ", ".join(f"{k} {v:.2f} MiB" for k, v in memory.items()))
        checksum = torch.tensor([float(sum(int(m.sum()) for m in pruner.masks.values()))], device=device)
        low, high = checksum.clone(), checksum.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if rank == 0:
            print(pruner.report())
            print("masks agree on every rank:", bool(low == high))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
