"""The GPU end-to-end run's harness, on the CPU: the plan fits one 10-minute call and leaves the quality study the
rest, the dry run echoes every stage, the carried wheels install offline onto the later stages' path, and the
outputs come back as at most eight flat files."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from tools import gpu_check, gpu_e2e

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["install", "wheels", "fvp", "e2e-resnet18", "e2e-minilm", "quality"]


def test_the_plan_fits_ten_minutes_and_leaves_the_quality_study_the_rest(tmp_path):
    plan = gpu_e2e.stages("python3", tmp_path, 16, "/tmp/site")
    assert [s.name for s in plan] == NAMES and gpu_e2e.BUDGET_S <= 9.5 * 60
    assert plan[0] == gpu_check.install_stage("python3", 16)
    fixed = sum(s.timeout for s in plan[:-1])
    assert fixed <= gpu_e2e.BUDGET_S - 60 and plan[-1].timeout >= gpu_e2e.BUDGET_S  # cut to what is left
    for stage in plan[2:]:
        assert stage.env["PYTHONPATH"].split(":")[0] == "/tmp/site", stage.name
        assert stage.command[:4] == ["python3", "-m", "benchmarks", stage.name.split("-")[0]]
        assert stage.command[stage.command.index("--device") + 1] == "cuda"
    timed = {s.name: s.command for s in plan if s.seconds_flag == "--seconds"}
    assert set(timed) == {"fvp", "e2e-resnet18", "e2e-minilm"} and "--models" not in timed["fvp"]  # all models
    assert plan[-1].command[-6:-2] == ["--model", "minilm", "--device", "cuda"]


def test_dry_run_echoes_every_stage_within_the_limits(tmp_path):
    out = tmp_path / "out"
    argv = ["--dry-run", "--out", str(out), "--scratch", str(tmp_path / "s"), "--site", "/tmp/site"]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.gpu_e2e", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    log = (out / gpu_e2e.LOG).read_text()
    for name in NAMES:
        assert f"===== {name}:" in log and f"[{name}] ok in" in proc.stdout
    assert "would run: PYTHONPATH=/tmp/site" in log and "benchmarks quality --model minilm --device cuda" in log
    assert "--seconds 100" in log and "--no-index --no-deps --no-compile --no-cache-dir --upgrade --target" in log
    summary = (out / "summary.md").read_text()
    assert summary.count("| ok |") == len(NAMES) and f"of a {gpu_e2e.BUDGET_S} s budget" in summary
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= gpu_e2e.MAX_FILES and all(p.parent == out for p in files)


def test_every_stage_is_cut_to_what_is_left_and_the_last_gets_all_of_it(tmp_path):
    plan = gpu_e2e.stages(sys.executable, tmp_path, 1)
    results = gpu_check.run(plan, tmp_path, budget=20, dry_run=True, echo=lambda _: None, log_name=gpu_e2e.LOG)
    assert [r.rc for r in results] == [0] * len(NAMES)
    spent = 0.0
    for r in results:
        assert r.limit <= 20 - spent + 1e-3, r.stage.name
        spent += r.seconds
    assert results[-1].limit > 20 - spent - 2  # the quality study: the whole rest, not a fixed share
    late = gpu_check.run(plan, tmp_path, budget=0.5, dry_run=True, echo=lambda _: None, log_name=gpu_e2e.LOG)
    assert all(r.rc is None for r in late)  # under a second left: nothing starts


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel of a package ``flsprobe`` with VALUE = 42."""
    folder.mkdir()
    path = folder / "flsprobe-0.1-py3-none-any.whl"
    info = "flsprobe-0.1.dist-info"
    files = {
        "flsprobe/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: flsprobe\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_the_carried_wheels_install_offline_onto_the_later_stages_path(tmp_path):
    site = tmp_path / "site"
    stage = next(s for s in gpu_e2e.stages(sys.executable, tmp_path, 1, str(site)) if s.name == "wheels")
    none = subprocess.run(stage.command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and "nothing to install" in none.stdout and not site.exists()
    _wheel(tmp_path / gpu_e2e.WHEELS)
    done = subprocess.run(stage.command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import flsprobe; print(flsprobe.VALUE)"],
        env={"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "42", probe.stderr
    (tmp_path / gpu_e2e.WHEELS / "broken-0.1-py3-none-any.whl").write_bytes(b"not a zip")
    assert subprocess.run(stage.command, cwd=tmp_path, capture_output=True, timeout=120).returncode != 0


def test_outputs_come_back_as_at_most_eight_flat_files(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    (scratch / "bench").mkdir(parents=True)
    (scratch / "minilm").mkdir()
    out.mkdir()
    for stem in ["fvp-cuda", "e2e-resnet18-cuda", "e2e-minilm-cuda", "extra-1", "extra-2"]:
        (scratch / "bench" / f"{stem}.md").write_text(f"table {stem}\n")
        (scratch / "bench" / f"{stem}.csv").write_text("a,b\n1,2\n")
    for name in ["minilm.md", "minilm.csv", "minilm.png"]:
        (scratch / "minilm" / name).write_text(name)
    (scratch / "minilm" / "fvp-cuda.md").write_text("same name, other folder\n")
    (out / "summary.md").write_text("s")
    (out / gpu_e2e.LOG).write_text("l")
    written = gpu_e2e.collect(scratch, out)
    everything = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(everything) == gpu_e2e.MAX_FILES and all(p.parent == out for p in everything)
    assert written[-1] == out / gpu_e2e.ARCHIVE and (out / "fvp-cuda.md").read_text() == "table fvp-cuda\n"
    with tarfile.open(out / gpu_e2e.ARCHIVE) as tar:
        names = set(tar.getnames())
        assert {"bench/fvp-cuda.csv", "minilm/minilm.md", "minilm/minilm.png", "minilm/fvp-cuda.md"} <= names
        assert len(names) == len([p for p in scratch.rglob("*") if p.is_file()])
    assert gpu_e2e.collect(tmp_path / "empty", out) == []
