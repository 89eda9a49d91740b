"""``python -m benchmarks kernels [--device cpu|cuda] [--ops ...] [--providers ...] [--out DIR]``,
``python -m benchmarks select [--device cpu|cuda] [--sizes N ...]`` (global k-smallest against torch's
kthvalue/topk/sort) and ``python -m benchmarks quality`` (the digits study)."""

from __future__ import annotations

import argparse
import sys

from benchmarks import registry, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="time ops × providers × shapes (verified against the reference first)")
    k.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    k.add_argument("--ops", nargs="+", default=list(registry.OPS), choices=registry.OPS)
    k.add_argument("--providers", nargs="+", default=list(registry.PROVIDERS), choices=registry.PROVIDERS)
    k.add_argument("--shapes", nargs="+", help="shape names (default: all on cuda, the small ones on cpu)")
    k.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    k.add_argument("--out", default="out/bench")
    s = sub.add_parser("select", help="select_smallest on N scores against torch.kthvalue, topk and sort")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--sizes", nargs="+", type=int, help="N values (default: 1e7 on cpu; 1.1e8 and 1e9 on cuda)")
    s.add_argument("--providers", nargs="+", default=["native", "kthvalue", "topk", "sort"])
    s.add_argument("--out", default="out/bench")
    q = sub.add_parser("quality", help="the digits accuracy-vs-sparsity study (FLS vs magnitude)")
    q.add_argument("--out", default="out/quality")
    args = parser.parse_args(argv)
    if args.command == "quality":
        from fls_kernels.__main__ import main as fls_main

        return fls_main(["demo", "--out", args.out])
    if args.command == "select":
        from benchmarks import select

        rows = select.run(args.device, args.sizes or select.SIZES[args.device], args.providers)
        csv_path, md_path = select.write(rows, args.out, args.device)
        print(md_path.read_text())
        print(f"wrote {csv_path} and {md_path}")
        return 0
    shapes = registry.SHAPES if args.device == "cuda" else registry.CPU_SHAPES
    if args.shapes:
        shapes = [s for s in registry.SHAPES if s[0] in set(args.shapes)]
    rows = runner.run(args.ops, args.providers, shapes, args.device, args.precision)
    csv_path, md_path = runner.write(rows, args.out, args.device)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
