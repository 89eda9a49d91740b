"""Command line: ``python -m fls_kernels info | demo | compare | prune``."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys


def _info(args: argparse.Namespace) -> int:
    import torch

    import fls_kernels
    from fls_kernels import backends, compare

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
        backend = backends.get_backend(name)
        found = compare.diagnose(backend)
        if found is not None:
            status = f"unavailable: {found[0]} — fix: {found[1]}"
        elif backend.auto_devices is not None and set(backend.devices) - set(backend.auto_devices):
            status += (
                f" (explicit request only on {', '.join(sorted(set(backend.devices) - set(backend.auto_devices)))})"
            )
        print(f"  {name:<10} {priority:>3}  {status}")
    env = {k: os.environ[k] for k in ("FLS_BACKEND", "FLS_BUILD_EXT", "TRITON_INTERPRET") if k in os.environ}
    if env:
        print("\nenvironment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    return 0


def _fit_lines_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.getMessage().startswith("fit step")


def _demo(args: argparse.Namespace) -> int:
    import contextlib

    from fls_kernels import demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("fls_kernels.prune").setLevel(logging.WARNING)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if progress:  # the bars show the aux steps
        logging.getLogger("fls_kernels.fit").setLevel(logging.WARNING)
    else:  # a line every 100 aux steps of the fit (not the refinements': one per sub-step)
        logging.getLogger("fls_kernels.fit").addFilter(_fit_lines_only)
    config = demo.DemoConfig(
        sparsities=tuple(args.sparsities),
        seeds=tuple(range(args.seeds)),
        fit_steps=args.fit_steps,
        progress=progress,
    )
    print(
        f"Digits CNN: train, fit Q ({config.fit_steps} aux steps), prune one-shot at "
        f"{', '.join(f'{s:.0%}' for s in config.sparsities)} with FLS and magnitude, {args.seeds} seeds."
    )
    expected = demo.estimate_seconds(config)
    print(
        f"Expected time: about {demo.format_seconds(expected)} on 2 idle CPU cores "
        f"({demo.format_seconds(expected / len(config.seeds))} a seed); each stage is logged as it starts.",
        flush=True,
    )
    redirect = contextlib.nullcontext()
    if progress:  # log lines above the bars, not through them
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    with redirect:
        result = demo.run(config)
    print()
    print(demo.table(result))
    paths = demo.write(result, args.out)
    print(f"\n{result.seconds:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import torch

    from fls_kernels import backends, compare

    device = torch.device(args.device)
    print(f"Every backend on {device} against the float64 reference, on the model's own layers and fitted Q;")
    print(f"then one prune step to {args.sparsity:.0%} per backend against the reference backend's step.")
    if args.backends is None:
        for b in backends.backends():
            problem = compare.backend_problem(b.name, device)
            if problem is not None:
                print(f"not compared: {problem}")
    print(flush=True)
    model, batches = args.factory(args.device)
    op_rows, steps = compare.run(model, batches, sparsity=args.sparsity, fit_steps=args.fit_steps, only=args.backends)
    print(compare.format_report(op_rows, steps))
    return 0 if all(r.ok or r.error is None for r in op_rows) else 1


def _check_compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument of ``compare`` that argparse's types cannot check, before anything is trained: the device,
    the model factory and the backends (known, available here, running on the device)."""
    import torch

    from fls_kernels import compare

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: cuda requested but {compare.no_cuda()}; use --device cpu")
    if args.model:
        try:
            args.factory = compare.load_factory(args.model)
        except (ValueError, ImportError, AttributeError) as exc:
            parser.error(f"argument --model: cannot load {args.model!r} ({type(exc).__name__}: {exc})")
        if not callable(args.factory):
            parser.error(f"argument --model: {args.model!r} is not a function")
    else:
        args.factory = compare.demo_model
    if args.backends:
        args.backends = sorted(set(args.backends) | {"reference"})
        device = torch.device(args.device)
        for name in args.backends:
            problem = compare.backend_problem(name, device)
            if problem is not None:
                parser.error(f"argument --backends: {problem}")


def _count(text: str) -> int:
    """argparse type: an int ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _sparsity(text: str) -> float:
    """argparse type: a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (a fraction of the weights pruned), got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fls_kernels", description=__doc__, formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices and the backends with their status", formatter_class=_HelpFormatter)
    p = sub.add_parser(
        "demo", help="prune a digits CNN with FLS and magnitude; table + plot", formatter_class=_HelpFormatter
    )
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--seeds", type=_count, default=3, help="number of seeds (0, 1, …)")
    p.add_argument(
        "--sparsities", type=_sparsity, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95], help="target sparsities"
    )
    p.add_argument("--fit-steps", type=_count, default=1500, help="aux steps fitting Q per seed")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="show progress bars (default: when stderr is a terminal)",
    )
    c = sub.add_parser(
        "compare",
        help="every available backend against the reference on a model (default: demo CNN)",
        formatter_class=_HelpFormatter,
    )
    c.add_argument(
        "--model",
        help="package.module:function returning (model, calibration batches) for a device "
        "(default: the demo's digits CNN, trained for 5 epochs)",
    )
    c.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="device to compare on; auto: cuda if present, else cpu",
    )
    c.add_argument("--sparsity", type=_sparsity, default=0.5, help="sparsity of the compared prune step, in [0, 1)")
    c.add_argument("--fit-steps", type=_count, default=100, help="aux steps fitting Q on the reference first")
    c.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="restrict to these backends; the reference is always included (default: every backend available on "
        "the device; `python -m fls_kernels info` lists them and why any is unavailable)",
    )
    r = sub.add_parser(
        "prune",
        help="prune a causal LM from a local Hugging Face folder; perplexity before and after; save_pretrained",
        formatter_class=_HelpFormatter,
    )
    r.add_argument("model_dir", metavar="MODEL_DIR", help="local folder of a causal LM and its tokenizer (no network)")
    r.add_argument("--method", required=True, help="a registered method: " + ", ".join(_methods()))
    r.add_argument("--sparsity", type=_sparsity, required=True, help="target sparsity in [0, 1) (N:M: j/M)")
    r.add_argument("--pattern", default="unstructured", help='"unstructured", "2:4" or any "N:M"')
    r.add_argument("--calib", required=True, metavar="TEXT_FILE", help="calibration text")
    r.add_argument("--samples", type=_count, default=128, help="calibration windows")
    r.add_argument("--seq-len", type=_count, default=512, help="tokens per window")
    r.add_argument("--eval", metavar="TEXT_FILE", help="text for perplexity before and after (default: none)")
    r.add_argument("--eval-windows", type=_count, help="evaluation windows (default: all the text holds)")
    r.add_argument("--batch-size", type=_count, default=8, help="windows per forward")
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to prune")
    r.add_argument(
        "--sequential",
        choices=["blocks"],
        help="prune decoder block by decoder block, each on the pruned blocks' outputs (default: whole model)",
    )
    r.add_argument(
        "--aux-steps", type=_count, default=0, help="fls: aux steps fitting λ (per block with --sequential blocks)"
    )
    r.add_argument("--out", required=True, metavar="OUT_DIR", help="folder for the pruned model and fls_report.json")
    args = parser.parse_args(argv)
    if args.command == "compare":
        _check_compare(c, args)
    if args.command == "prune":
        return _prune(r, args)
    return {"info": _info, "demo": _demo, "compare": _compare}[args.command](args)


def _methods() -> list[str]:
    from fls_kernels.pruning.registry import PRUNERS

    return sorted(PRUNERS)


def _prune(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``prune``: a bad input is one line naming the argument, exit status 2."""
    import torch

    from fls_kernels import llm

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda requested but no CUDA device is available")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        llm.prune(
            args.model_dir,
            method=args.method,
            sparsity=args.sparsity,
            calib=args.calib,
            out=args.out,
            pattern=args.pattern,
            samples=args.samples,
            seq_len=args.seq_len,
            eval_text=args.eval,
            eval_windows=args.eval_windows,
            batch_size=args.batch_size,
            device=args.device,
            progress=sys.stderr.isatty(),
            sequential=args.sequential,
            steps=args.aux_steps,
        )
    except llm.InputError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
