"""The GPU check's harness, on the CPU: the plan fits its budget and the device tool's return limits, stages run
in order with their own limits, a failing or hanging stage does not stop the next, and the outputs come back
flat."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_plan_fits_seven_minutes_and_builds_for_sm90_on_every_core(tmp_path):
    plan = gpu_check.stages("python3", tmp_path, 16)
    assert sum(s.timeout for s in plan) <= gpu_check.BUDGET_S <= 7 * 60
    names = [s.name for s in plan]
    assert names[:2] == ["install", "info"] and {"gpu-tests", "op-tests", "kernels-fp32", "select"} <= set(names)
    install = plan[0]
    assert (
        install.command[-5:] == ["--no-deps", "--no-build-isolation", "-e", "."][-4:] or "--no-deps" in install.command
    )
    assert {"--no-deps", "--no-build-isolation", "-e"} <= set(install.command)
    assert install.env == {"FLS_BUILD_EXT": "1", "FLS_CUDA_ARCHS": "9.0", "MAX_JOBS": "16"}
    tests = {s.name: s.command for s in plan if s.name.endswith("tests")}  # the GPU tests only, not the CPU suite
    assert tests["gpu-tests"][-3:] == ["-m", "gpu", "tests"]
    assert tests["op-tests"][-4:] == ["tests/ops", "tests/triton", "-k", "cuda or triton"]
    for s in plan[2:]:
        assert s.env.get("FLS_AUTOTUNE") == "quick", s.name  # bounded Triton autotuning


def test_a_failing_and_a_hanging_stage_do_not_stop_the_next(tmp_path):
    plan = [
        gpu_check.Stage("fails", _python("import sys; print('bad'); sys.exit(3)"), 10),
        gpu_check.Stage("hangs", _python("import time; print('waiting', flush=True); time.sleep(60)"), 0.5),
        gpu_check.Stage("passes", _python("import os; print(os.environ['MARK'])"), 10, {"MARK": "env-set"}),
    ]
    lines = []
    start = time.perf_counter()
    results = gpu_check.run(plan, tmp_path, budget=30, echo=lines.append)
    assert time.perf_counter() - start < 10  # the hanging stage was killed at its limit
    assert [r.rc for r in results] == [3, gpu_check.TIMEOUT_RC, 0]
    assert results[1].seconds < 5 and results[1].limit == 0.5
    log = (tmp_path / "gpu-check.log").read_text()
    assert "bad" in log and "waiting" in log and "env-set" in log and "exit 124" in log
    assert lines[0].startswith("[fails] failed (exit 3) in") and lines[1].startswith("[hangs] timed out")
    table = gpu_check.summary(results, 30)
    assert "| fails | failed (exit 3) |" in table and "| hangs | timed out |" in table and "1/3 stages ok" in table


def test_limits_are_cut_to_what_is_left_of_the_budget(tmp_path):
    plan = [
        gpu_check.Stage("long", _python("import time; time.sleep(60)"), 100),
        gpu_check.Stage("late", _python("print('never')"), 100),
    ]
    results = gpu_check.run(plan, tmp_path, budget=1.5, echo=lambda _: None)
    assert results[0].rc == gpu_check.TIMEOUT_RC and results[0].limit <= 1.5
    assert results[1].rc is None and "never" not in (tmp_path / "gpu-check.log").read_text()


def test_outputs_come_back_as_at_most_eight_flat_files(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    (scratch / "compiled").mkdir(parents=True)
    out.mkdir()
    header = ["op", "shape", "provider", "precision", "ms"]
    for path, precision in [
        (scratch / "kernels-cuda.csv", "fp32"),
        (scratch / "kernels-cuda-tf32.csv", "tf32"),
        (scratch / "kernels-cuda-bf16.csv", "bf16"),
        (scratch / "compiled" / "kernels-cuda.csv", "fp32"),
    ]:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, ["kron_qv", "768", "cuda", precision, "0.1"]])
        path.with_suffix(".md").write_text(f"table {precision}\n")
        path.with_suffix(".png").write_bytes(b"png")
    (scratch / "select-cuda.csv").write_text("n,ms\n1,2\n")
    (scratch / "select-cuda.md").write_text("select table\n")
    (out / "summary.md").write_text("s")
    (out / "gpu-check.log").write_text("l")
    files = gpu_check.collect(scratch, out)
    everything = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(everything) <= gpu_check.MAX_FILES and all(p.parent == out for p in everything)
    assert {p.name for p in files} == {
        "kernels-cuda.md", "kernels-cuda-tf32.md", "kernels-cuda-bf16.md", "select-cuda.md", "kernels.csv", "select.csv"
    }  # fmt: skip
    rows = list(csv.reader(open(out / "kernels.csv")))
    assert rows[0] == header and sorted(r[3] for r in rows[1:]) == ["bf16", "fp32", "fp32", "tf32"]


def test_dry_run_from_the_command_line(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.gpu_check",
            "--dry-run",
            "--out",
            str(out),
            "--scratch",
            str(tmp_path / "s"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    log = (out / "gpu-check.log").read_text()
    for stage in gpu_check.stages(sys.executable, tmp_path / "s", 1):
        assert f"===== {stage.name}:" in log
        assert f"[{stage.name}] ok in" in proc.stdout
    assert (
        "would run: FLS_BUILD_EXT=1 FLS_CUDA_ARCHS=9.0" in log
        and "pip install --no-deps --no-build-isolation -e ." in log
    )
    assert (out / "summary.md").read_text().count("| ok |") == len(gpu_check.stages("p", tmp_path, 1))


def test_quick_autotuning_searches_a_subset_of_the_full_configs():
    import pytest

    common = pytest.importorskip("fls_kernels.backends.triton._common")
    full, quick = common.gemm_tiles("full"), common.gemm_tiles("quick")
    assert 0 < len(quick) < len(full) and set(quick) <= set(full)
    assert min(t[0] * t[1] for t in quick) == min(t[0] * t[1] for t in full[:-1])  # a small tile stays in
    with pytest.raises(ValueError, match="FLS_AUTOTUNE"):
        common.gemm_tiles("exhaustive")


def test_benchmark_stages_are_told_their_time_so_a_cut_stage_still_writes_its_tables(tmp_path):
    plan = gpu_check.stages("python3", tmp_path, 4)
    timed = [s for s in plan if s.seconds_flag]
    assert {s.name for s in timed} == {s.name for s in plan if s.name.startswith(("kernels", "compiled", "select"))}
    stage = gpu_check.with_seconds(timed[0], 40)
    assert stage.command[-2:] == ["--seconds", "30"] and stage.env == timed[0].env
    seen = []
    echo = gpu_check.Stage("echo", _python("import sys; print(sys.argv[1:])"), 20, seconds_flag="--seconds")
    gpu_check.run([echo], tmp_path, budget=8, echo=seen.append)
    assert "['--seconds', '6']" in (tmp_path / "gpu-check.log").read_text()


def test_a_time_limited_kernels_run_tabulates_what_it_did_not_time():
    from benchmarks import registry, runner

    shapes = registry.CPU_SHAPES[:2]
    spent = runner.run(["obs_scores"], ["reference"], shapes, "cpu", seconds=0)
    assert [r.ms for r in spent] == [None, None] and all("not timed" in r.note for r in spent)
    timed = runner.run(["obs_scores"], ["reference"], shapes, "cpu", seconds=600)
    assert all(r.ms is not None for r in timed)
