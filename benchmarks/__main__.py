"""``python -m benchmarks kernels [--device cpu|cuda] [--ops ...] [--providers ...] [--groups ...] [--out DIR]``,
``python -m benchmarks select [--device cpu|cuda] [--sizes N ...]`` (global k-smallest against torch's
kthvalue/topk/sort), ``python -m benchmarks fvp`` (ways of computing the exact Fisher-vector product, against a
forward + backward), ``python -m benchmarks e2e`` (a whole-model prune, time split by stage, and the split of one
aux step) and ``python -m benchmarks quality`` (the digits and MiniLM studies)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks import harness, models, peaks, registry, runner, select
from fls_kernels.backends.table import PRECISIONS
from fls_kernels.curvature.fitter import COMPILE_MODES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernels", help="time ops × providers × shapes (verified against the reference first)")
    k.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    k.add_argument(
        "--ops",
        nargs="+",
        default=list(registry.OPS),
        choices=registry.OPS,
        help="ops of the table (select_smallest has its own command: select)",
    )
    k.add_argument("--providers", nargs="+", default=list(registry.PROVIDERS), choices=registry.PROVIDERS)
    k.add_argument("--shapes", nargs="+", help="shape names (default: all on cuda, the small ones on cpu)")
    k.add_argument(
        "--groups",
        nargs="+",
        choices=list(registry.GROUPS),
        help="whole-model layer lists for the grouped ops and per-layer loops (default: all on cuda, none on cpu)",
    )
    k.add_argument("--precision", default="fp32", choices=PRECISIONS)
    k.add_argument("--out", default="out/bench")
    k.add_argument("--base", help="also run at this git ref and write a speed-up table against it")
    k.add_argument("--seconds", type=float, help="start no case after this many seconds (the rest: not timed)")
    s = sub.add_parser("select", help="select_smallest on N scores against torch.kthvalue, topk and sort")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--sizes", nargs="+", type=int, help="N values (default: 1e7 on cpu; 1.1e8 and 1e9 on cuda)")
    s.add_argument("--providers", nargs="+", default=list(select.PROVIDERS))
    s.add_argument("--out", default="out/bench")
    s.add_argument("--seconds", type=float, help="start no size after this many seconds")
    f = sub.add_parser("fvp", help="ways of computing the exact Fisher-vector product, against a forward+backward")
    f.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    f.add_argument("--models", nargs="+", default=list(models.NAMES), choices=models.NAMES)
    f.add_argument("--out", default="out/bench")
    f.add_argument("--seconds", type=float, help="start no measurement after this many seconds")
    e = sub.add_parser("e2e", help="a whole-model FLS prune per backend, time split by stage; one aux step's split")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    e.add_argument("--model", choices=models.NAMES, default="digits")
    e.add_argument("--backends", nargs="+", default=["reference", "cpu", "cuda", "triton"])
    e.add_argument("--fit-steps", type=int, help="aux steps of the prune's fit (default: per model and device)")
    e.add_argument("--aux-steps", type=int, help="aux steps timed for the per-step split (default: per device)")
    e.add_argument("--substeps", type=int, help="prune sub-steps (default: 4 on cpu, 16 on cuda)")
    e.add_argument("--sparsity", type=float, default=0.8)
    e.add_argument("--batch", type=int, help="calibration batch size (default: per model and device)")
    e.add_argument("--aux-compile", choices=COMPILE_MODES, help="torch.compile mode of the aux steps' λ side")
    e.add_argument("--out", default="out/bench")
    e.add_argument("--seconds", type=float, help="start no backend after this many seconds")
    r = sub.add_parser("readme", help="rebuild benchmarks/README.md from the latest outputs")
    r.add_argument("--out", default="out/bench")
    q = sub.add_parser("quality", help="the digits study: FLS vs every baseline, one-shot and gradual")
    q.add_argument("--out", help="default: out/quality (digits), out/minilm or out/minilm_reduced")
    q.add_argument("--seeds", type=int, default=5)
    q.add_argument("--seed-list", type=int, nargs="+", help="run these seeds only (e.g. one process per core)")
    q.add_argument("--merge", nargs="+", help="combine the outputs of runs over disjoint seeds instead of running")
    q.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run, not a result)")
    q.add_argument("--sparsities", type=float, nargs="+", help="digits: one-shot sparsities (default 0.5 … 0.95)")
    q.add_argument("--gradual", type=float, nargs="*", help="digits: gradual targets (default 0.9 0.95)")
    q.add_argument(
        "--methods",
        nargs="+",
        help="digits: a subset of the rows (default: the study's rows and every registered method)",
    )
    q.add_argument("--fls-gradual-refine", type=int, help="digits: FLS aux steps before each gradual sub-step")
    q.add_argument("--model", choices=["digits", "minilm", "gpt"], default="digits")
    q.add_argument("--reduced", action="store_true", help="minilm: CPU-sized budgets (< 20 minutes on 2 cores)")
    q.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="minilm: where to run")
    q.add_argument("--ablation", action="store_true", help="minilm: the ablation of FLS's options (70%%)")
    q.add_argument("--variants", type=int, nargs="+", help="ablation: run these rows only (indices)")
    q.add_argument(
        "--lambda-study",
        action="store_true",
        help="does the learned λ help (FLS vs its 0-aux-step start and K-FAC); minilm or digits",
    )
    q.add_argument(
        "--blocks-timing",
        action="store_true",
        help="minilm: SparseGPT's wall time against depth, whole-model vs block by block vs the authors' flow",
    )
    q.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="override the study's Config fields, e.g. substeps=8 (MiniLM, GPT, the λ studies)",
    )
    args = parser.parse_args(argv)
    if args.command == "quality" and args.out is None:
        args.out = "out/quality" if args.model == "digits" else "out/minilm" + ("_reduced" if args.reduced else "")
        args.out = "out/minilm_ablation" if args.ablation else args.out
        args.out = "out/minilm_lambda" + ("_quick" if args.quick else "") if args.lambda_study else args.out
        args.out = "out/digits_lambda" if args.lambda_study and args.model == "digits" else args.out
        args.out = "out/gpt" + ("_quick" if args.quick else "") if args.model == "gpt" else args.out
        args.out = "out/blocks_timing" + ("_quick" if args.quick else "") if args.blocks_timing else args.out
    if args.command == "quality" and args.lambda_study and args.model == "digits":
        from benchmarks.quality import digits, digits_lambda, minilm

        try:
            overrides = minilm.parse_overrides(args.set, digits_lambda.Config)
        except ValueError as exc:
            parser.error(f"--set: {exc}")
        config = digits_lambda.Config(**{**(digits_lambda.SMOKE if args.quick else {}), **overrides})
        if args.seed_list:
            config.seeds = tuple(args.seed_list)
        if args.merge:
            rows, stamp = digits_lambda.merge([Path(p) for p in args.merge])
        else:
            stamp = digits.stamp(config.protocol.threads)  # the checkout the rows run on, before they start
            rows = digits_lambda.run(config)
        print(digits_lambda.table(rows, config))
        print("wrote", ", ".join(str(p) for p in digits_lambda.write(rows, config, args.out, stamp)))
        return 0
    if args.command == "quality" and args.model == "gpt":
        from benchmarks.quality import gpt

        return _study(gpt, args, parser)
    if args.command == "quality" and args.blocks_timing:
        from benchmarks.quality import blocks_timing

        return _study(blocks_timing, args, parser)
    if args.command == "quality" and args.lambda_study:
        from benchmarks.quality import lambda_study

        return _study(lambda_study, args, parser, device=args.device)
    if args.command == "quality" and args.ablation:
        from benchmarks.quality import ablation

        stamp = None
        if args.merge:
            rows = ablation.merge([Path(p) for p in args.merge])
            stamp = ablation.stamps([Path(p) for p in args.merge]) or None
        else:
            picked = ablation.VARIANTS if args.variants is None else [ablation.VARIANTS[i] for i in args.variants]
            stamp = harness.stamp_line(args.device)  # the checkout the rows run on, taken before they start
            rows = ablation.run(picked)
        print(ablation.table(rows))
        print("wrote", ", ".join(str(p) for p in ablation.write(rows, args.out, args.device, stamp)))
        return 0
    if args.command == "quality" and args.model == "minilm":
        from benchmarks.quality import minilm

        try:
            overrides = minilm.parse_overrides(args.set)
        except ValueError as exc:
            parser.error(f"--set: {exc}")
        config = minilm.Config(device=args.device, **{**(minilm.REDUCED if args.reduced else {}), **overrides})
        stamp = harness.stamp_line(args.device)
        rows = minilm.run(config)
        print(minilm.table(rows, config))
        print("wrote", ", ".join(str(p) for p in minilm.write(rows, config, args.out, stamp)))
        return 0
    if args.command == "quality":
        from benchmarks.quality import digits

        protocol = digits.Protocol(seeds=tuple(args.seed_list or range(args.seeds)))
        if args.sparsities:
            protocol = dataclasses.replace(protocol, sparsities=tuple(args.sparsities))
        if args.gradual is not None:
            protocol = dataclasses.replace(protocol, gradual_targets=tuple(args.gradual))
        if args.methods:
            unknown = set(args.methods) - set(digits.METHODS)
            if unknown:
                parser.error(f"--methods: unknown {sorted(unknown)}; choose from {list(digits.METHODS)}")
            protocol = dataclasses.replace(protocol, methods=tuple(args.methods))
        if args.fls_gradual_refine is not None:
            protocol = dataclasses.replace(protocol, fls_gradual_refine_steps=args.fls_gradual_refine)
        if args.merge:
            results = digits.merge([Path(p) for p in args.merge], protocol)
            print(digits.table(results))
            print("wrote", ", ".join(str(p) for p in digits.write(results, args.out)))
            return 0
        if args.quick:
            protocol = dataclasses.replace(
                protocol,
                sparsities=tuple(args.sparsities or (0.5, 0.8)),
                gradual_targets=(0.9,) if args.gradual is None else protocol.gradual_targets,
                substeps=2,
                damping_grid=(1.0,),
                fls_damping_grid=(1.0,),
                fls_fit_steps=20,
                fls_refine_steps=2,
                fls_gradual_refine_steps=2,
                obert_grads=32,
                finetune_steps=20,
                prune_until=10,
                prune_every=5,
            )
        results = digits.run(protocol)
        print(digits.table(results))
        print("wrote", ", ".join(str(p) for p in digits.write(results, args.out)))
        return 0
    if args.command == "readme":
        from benchmarks import readme

        print(f"wrote {readme.write(args.out)}")
        return 0
    if args.command == "fvp":
        from benchmarks import fvp

        def write_fvp(rows: list, descriptions: dict) -> tuple[Path, Path]:
            return fvp.write(rows, args.out, args.device, descriptions)

        csv_path, md_path = write_fvp(*fvp.run(args.models, args.device, seconds=args.seconds, checkpoint=write_fvp))
        print(md_path.read_text())
        print(f"wrote {csv_path} and {md_path}")
        return 0
    if args.command == "e2e":
        from benchmarks import end_to_end

        settings = end_to_end.Settings.defaults(args.model, args.device).override(
            fit_steps=args.fit_steps,
            aux_steps=args.aux_steps,
            substeps=args.substeps,
            sparsity=args.sparsity,
            aux_compile=args.aux_compile,
        )
        try:
            model = models.build(args.model, args.device, batch=args.batch)
        except RuntimeError as exc:  # a model whose package is missing
            print(f"e2e: {exc}", file=sys.stderr)
            return 1

        def write_e2e(result: end_to_end.Result) -> tuple[Path, Path]:
            return end_to_end.write(result, args.out, args.device)

        result = end_to_end.run(model, args.device, args.backends, settings, seconds=args.seconds, checkpoint=write_e2e)
        csv_path, md_path = write_e2e(result)
        print(md_path.read_text())
        print(f"wrote {csv_path} and {md_path}")
        return 0
    if args.command == "select":
        rows = select.run(args.device, args.sizes or select.SIZES[args.device], args.providers, args.seconds)
        csv_path, md_path = select.write(rows, args.out, args.device)
        print(md_path.read_text())
        print(f"wrote {csv_path} and {md_path}")
        return _verdict(rows)
    shapes = registry.SHAPES if args.device == "cuda" else registry.CPU_SHAPES
    if args.shapes:
        shapes = [s for s in registry.SHAPES if s[0] in set(args.shapes)]
    groups = args.groups if args.groups is not None else (list(registry.GROUPS) if args.device == "cuda" else [])
    ceilings = peaks.measure(args.device, (args.precision,))  # the roofline's rates, from this run
    print(ceilings.describe())
    rows = runner.run(args.ops, args.providers, shapes, args.device, args.precision, groups, args.seconds)
    csv_path, md_path = runner.write(rows, args.out, args.device, args.precision, ceilings)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    if args.base:
        argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        i = argv.index("--base")
        del argv[i : i + 2]
        if "--out" in argv:
            j = argv.index("--out")
            del argv[j : j + 2]
        base_out = runner.run_at(args.base, argv, Path(args.out) / f"base-{args.base.replace('/', '_')}")
        name = runner.stem(args.device, args.precision)
        table = runner.against_base(rows, base_out / f"{name}.csv", args.base)
        path = Path(args.out) / f"{name}-vs-base.md"
        path.write_text(table)
        print(table)
        print(f"wrote {path}")
    return _verdict(rows)


def _verdict(rows: list) -> int:
    """1 when a provider disagreed with the reference or failed (named on stderr), else 0."""
    bad = harness.disagreements(rows)
    for r in bad:
        print(f"{r.provider} on {r.case}: {r.note}", file=sys.stderr)
    return 1 if bad else 0


def _study(module, args: argparse.Namespace, parser: argparse.ArgumentParser, **fixed: object) -> int:
    """Run a study module (``Config``, ``SMOKE``, ``run``, ``table``, ``write``) with ``--quick`` / ``--set`` over
    ``fixed`` fields, print its table and write its outputs under ``--out``."""
    from benchmarks.quality import minilm

    try:
        overrides = minilm.parse_overrides(args.set, module.Config)
    except ValueError as exc:
        parser.error(f"--set: {exc}")
    config = module.Config(**{**(module.SMOKE if args.quick else {}), **fixed, **overrides})
    stamp = harness.stamp_line(str(fixed.get("device", "cpu")))
    rows = module.run(config)
    print(module.table(rows, config))
    print("wrote", ", ".join(str(p) for p in module.write(rows, config, args.out, stamp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
