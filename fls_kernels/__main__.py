"""Command line: ``python -m fls_kernels info | demo | compare``."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys


def _info(args: argparse.Namespace) -> int:
    import torch

    import fls_kernels
    from fls_kernels import backends

    print(f"fls_kernels {fls_kernels.__version__}")
    print(f"python      {platform.python_version()} ({sys.executable})")
    print(f"torch       {torch.__version__} (CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"triton      {triton.__version__}")
    except ImportError:
        print("triton      not installed")
    try:
        import numpy

        print(f"numpy       {numpy.__version__}")
    except ImportError:
        print("numpy       not installed")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"device {i}    {p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)")
    else:
        print("device      no CUDA device")
    print("\nbackends (automatic selection prefers the higher priority):")
    for name, priority, status in backends.report():
        print(f"  {name:<10} {priority:>3}  {status}")
    env = {k: os.environ[k] for k in ("FLS_BACKEND", "FLS_BUILD_EXT", "TRITON_INTERPRET") if k in os.environ}
    if env:
        print("\nenvironment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fls_kernels import demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fls_kernels.fit").setLevel(logging.WARNING)
    logging.getLogger("fls_kernels.prune").setLevel(logging.WARNING)
    config = demo.DemoConfig(
        sparsities=tuple(args.sparsities),
        seeds=tuple(range(args.seeds)),
        fit_steps=args.fit_steps,
        progress=args.progress,
    )
    print(
        f"Digits CNN: train, fit Q ({config.fit_steps} aux steps), prune one-shot at "
        f"{', '.join(f'{s:.0%}' for s in config.sparsities)} with FLS and magnitude, {args.seeds} seeds."
    )
    result = demo.run(config)
    print()
    print(demo.table(result))
    paths = demo.write(result, args.out)
    print(f"\n{result.seconds:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import torch

    from fls_kernels import compare

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    factory = compare.load_factory(args.model) if args.model else compare.demo_model
    model, batches = factory(device)
    op_rows, steps = compare.run(model, batches, sparsity=args.sparsity, fit_steps=args.fit_steps, only=args.backends)
    print(f"Every backend on {device} against the float64 reference, on the model's own layers and fitted Q;")
    print(f"then one prune step to {args.sparsity:.0%} per backend against the reference backend's step.\n")
    print(compare.format_report(op_rows, steps))
    return 0 if all(r.ok or r.error is None for r in op_rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fls_kernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and the backends with their status")
    p = sub.add_parser("demo", help="prune a digits CNN with FLS and magnitude; table + plot")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    p.add_argument("--fit-steps", type=int, default=1500)
    p.add_argument("--progress", action="store_true", help="show progress bars")
    c = sub.add_parser("compare", help="every available backend against the reference on a model (default: demo CNN)")
    c.add_argument("--model", help="package.module:function returning (model, calibration batches) for a device")
    c.add_argument("--device", choices=["cpu", "cuda"])
    c.add_argument("--sparsity", type=float, default=0.5)
    c.add_argument("--fit-steps", type=int, default=100)
    c.add_argument("--backends", nargs="+", help="restrict to these backends (reference is always included)")
    args = parser.parse_args(argv)
    if args.command == "compare" and args.backends:
        args.backends = sorted(set(args.backends) | {"reference"})
    return {"info": _info, "demo": _demo, "compare": _compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
