"""The benchmark registry and runner: a whole-model group runs through verify, timing and the tables."""

from __future__ import annotations

import pytest
import torch

from benchmarks import harness, registry, runner
from tests.conftest import backend_or_skip


def test_bert_base_group_is_72_layers():
    case = registry.Case.group("surgeon_update_grouped_", "bert-base 72 layers", "tf32")
    assert len(case.layers) == 72 and (case.m, case.n) == (3072, 3072)
    assert case.flops() == 12 * (4 * 2 * 768**3 * 2 + 2 * 2 * 3072 * 768 * (3072 + 768))


@pytest.mark.triton
def test_grouped_cases_verify_time_and_tabulate(monkeypatch, tmp_path):
    backend_or_skip("triton", "surgeon_update_grouped_", "cpu", torch.float32)
    monkeypatch.setitem(registry.GROUPS, "tiny", [(16, 32), (5, 17), (16, 32)])
    ops = ["kron_qv_grouped", "surgeon_update_grouped_", "surgeon_update_"]
    rows = runner.run(ops, ["reference", "triton"], [], "cpu", "fp32", ["tiny"])
    assert [(r.op, r.provider) for r in rows] == [(op, p) for op in ops for p in ("reference", "triton")]
    assert all(r.ms is not None and r.error <= 1e-5 for r in rows)
    csv_path, md_path = runner.write(rows, tmp_path, "cpu")
    assert csv_path.read_text().count("tiny") == len(rows)
    assert "| surgeon_update_grouped_ | tiny | triton |" in md_path.read_text()


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda out: out * (1 + 1e-3), "relative error"),
        (
            lambda out: out.masked_fill(
                torch.zeros_like(out, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True), float("nan")
            ),
            "NaN",
        ),
    ],
    ids=["scaled", "nan"],
)
def test_verify_fails_on_a_wrong_provider(monkeypatch, corrupt, match):
    original = registry.provider_call

    def provider_call(op, provider, grouped_inputs=False):
        call = original(op, "reference" if provider == "bad" else provider, grouped_inputs)
        return (lambda t, p: corrupt(call(t, p))) if provider == "bad" else call

    monkeypatch.setattr(registry, "provider_call", provider_call)
    case = registry.Case("kron_qv", "tiny", 9, 13)
    assert runner.verify(case, "reference", "cpu") < 1e-6
    with pytest.raises(harness.VerifyError, match=match):
        runner.verify(case, "bad", "cpu")


def test_the_harness_rule_not_run_verified_then_timed():
    """harness.measure: a provider that cannot run or a spent deadline is not run; one that disagrees or fails is
    not timed; the others are verified, then timed, with their further columns."""
    from benchmarks.timer import Deadline

    timed = []

    def time_it():
        timed.append(1)
        return 2.0, {"peak_mib": None}

    def wrong():
        raise harness.VerifyError("off by 1e-3", 1e-3)

    case = dict(op="x")
    assert harness.measure(case, "p", time_it, unavailable="no kernel").note == "no kernel"
    assert "were spent" in harness.measure(case, "p", time_it, deadline=Deadline(-1)).note
    row = harness.measure(case, "p", time_it, verify=wrong)
    assert (row.ms, row.error, row.note) == (None, 1e-3, "DISAGREES with the reference (off by 1e-3): not timed")
    failed = harness.measure(case, "p", lambda: 1 / 0)
    assert failed.ms is None and failed.note == "failed: ZeroDivisionError: division by zero"

    def too_big():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB\nmore")

    big = harness.measure(case, "p", too_big)
    assert (
        big.note == "out of memory: CUDA out of memory. Tried to allocate 4 GiB"
        and big not in harness.disagreements([big])
    )
    assert not timed and harness.disagreements([row, failed]) == [row, failed]
    ok = harness.measure(case, "p", time_it, verify=lambda: 1e-7, note="fine")
    assert (ok.ms, ok.error, ok.note, ok.peak_mib, ok.op) == (2.0, 1e-7, "fine", None, "x") and timed == [1]
    with pytest.raises(AttributeError, match="no column 'shape'"):
        ok.shape


def test_a_disagreeing_provider_is_listed_not_timed_and_the_run_goes_on(monkeypatch):
    original = registry.provider_call

    def provider_call(op, provider, grouped_inputs=False):
        call = original(op, "reference" if provider == "cpu" else provider, grouped_inputs)
        return (lambda t, p: call(t, p) * 1.01) if provider == "cpu" else call

    monkeypatch.setattr(registry, "provider_call", provider_call)
    monkeypatch.setattr(registry, "unavailable", lambda op, provider, device: None)
    rows = runner.run(["kron_qv"], ["cpu", "reference"], [("tiny", 9, 13), ("tiny2", 5, 7)], "cpu")
    assert [(r.shape, r.provider, r.ms is None) for r in rows] == [
        ("tiny", "cpu", True), ("tiny", "reference", False), ("tiny2", "cpu", True), ("tiny2", "reference", False)
    ]  # fmt: skip
    assert (
        all(r.note.startswith("DISAGREES") for r in harness.disagreements(rows))
        and len(harness.disagreements(rows)) == 2
    )


def test_verify_fails_on_a_wrong_mask(monkeypatch):
    original = registry.provider_call

    def provider_call(op, provider, grouped_inputs=False):
        call = original(op, "reference" if provider == "bad" else provider, grouped_inputs)
        return (lambda t, p: ~call(t, p)) if provider == "bad" else call

    monkeypatch.setattr(registry, "provider_call", provider_call)
    assert runner.verify(registry.Case("select_nm", "tiny", 7, 12), "cpu", "cpu") == 0.0
    with pytest.raises(harness.VerifyError, match="mask entries differ"):
        runner.verify(registry.Case("select_nm", "tiny", 7, 12), "bad", "cpu")


def test_ceilings_are_measured_and_make_the_roofline():
    from benchmarks import peaks

    ceilings = peaks.measure("cpu", ("fp32", "bf16"), (4 * 2**20, 128))
    assert ceilings.bandwidth > 1e8 and all(1e8 < r < 1e15 for r in ceilings.flops.values())
    case = registry.Case("kron_qv", "tiny", 64, 32)
    bound = ceilings.roofline_ms(case.flops(), case.bytes(), "fp32")
    assert bound == pytest.approx(1e3 * max(case.flops() / ceilings.flops["fp32"], case.bytes() / ceilings.bandwidth))
    assert ceilings.roofline_ms(1.0, 1.0, "tf32") is None  # no rate measured for tf32
    assert "ceilings measured in this run: copy" in ceilings.describe()


def test_the_gemms_yardstick_is_timed_not_verified_and_tabulated(monkeypatch, tmp_path):
    from benchmarks import peaks

    monkeypatch.setitem(registry.GROUPS, "tiny", [(16, 32), (5, 17)])
    t = registry.make_inputs(registry.Case("kron_qv", "x", 9, 13), "cpu")
    (got,) = registry.provider_call("kron_qv", "gemms")(t, "fp32")
    torch.testing.assert_close(got, t["G_R"] @ t["W"] @ t["G_L"])
    assert registry.unavailable("obs_scores", "gemms", "cpu") is not None
    rows = runner.run(["surgeon_update_grouped_"], ["reference", "gemms"], [], "cpu", "fp32", ["tiny"])
    assert [(r.provider, r.error is None, r.note) for r in rows] == [
        ("reference", False, ""),
        ("gemms", True, "yardstick"),
    ]
    ceilings = peaks.measure("cpu", ("fp32",), (4 * 2**20, 128))
    _, md_path = runner.write(rows, tmp_path, "cpu", "fp32", ceilings)
    table = md_path.read_text()
    assert "ceilings measured in this run" in table and "time / 2 GEMMs" in table
    ref_row = next(line for line in table.splitlines() if "| reference |" in line)
    ratio = rows[0].ms / rows[1].ms
    assert f"| {ratio:.2f} |" in ref_row and ref_row.rstrip(" |").endswith("%")


def test_readme_keeps_measured_sections_whose_output_is_absent(tmp_path):
    from benchmarks import readme

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "kernels-cpu.md").write_text("fresh table\n")
    title = readme.SECTIONS[0][0]
    previous = f"# Benchmarks\n\n## {title}\n\nold H200 table\n\n## {readme.SECTIONS[3][0]}\n\nold cpu table\n"
    text = readme.build(tmp_path / "bench", previous)
    assert "old H200 table" in text and "fresh table" in text and "old cpu table" not in text
    assert text.count("_Not measured yet._") == len(readme.SECTIONS) + len(readme.COMPILED) + len(readme.QUALITY) - 2


def test_readme_takes_the_compile_summary_from_out_gpu_compile(tmp_path):
    from benchmarks import readme

    (tmp_path / "gpu-compile").mkdir()
    (tmp_path / "gpu-compile" / "gpu-compile.md").write_text("compiled table\n")
    title = readme.COMPILED[0][0]
    assert title == "Kernels compiled for sm_90 and sm_80 (no GPU)"
    assert f"## {title}\n\ncompiled table\n" in readme.build(tmp_path / "bench")
    kept = readme.build(tmp_path / "elsewhere" / "bench", f"# Benchmarks\n\n## {title}\n\nold compile table\n")
    assert f"## {title}\n\nold compile table\n" in kept


def test_a_spent_deadline_leaves_every_row_not_timed_in_each_front_end():
    """One time limit for the kernel runner, the selection benchmark, and (tests/test_fvp_bench.py) the FVP one:
    nothing starts once it is spent, and every row says so."""
    import time

    from benchmarks import select
    from benchmarks.timer import Deadline

    assert not Deadline(None).spent() and Deadline(None).note() is None and Deadline(60).note() is None
    spent = Deadline(0)
    time.sleep(1e-3)
    assert spent.spent() and spent.note() == "not timed: the run's 0 s were spent"
    op = registry.OPS[0]
    rows = runner.run([op], ["reference"], registry.CPU_SHAPES, "cpu", seconds=0)
    assert rows and all(r.ms is None and r.note == spent.note() for r in rows)
    rows = select.run("cpu", [10, 20], ["native"], seconds=0)
    assert [(r.n, r.provider, r.note) for r in rows] == [(10, "fls cpu", spent.note()), (20, "fls cpu", spent.note())]


def test_every_front_end_writes_its_tables_through_one_stamped_writer(tmp_path):
    """write_tables: the header, each row with None as an empty cell and the stamp on every row; the markdown."""
    import csv

    from benchmarks import select

    meta = {"gpu_or_cpu": "cpu", "commit": "abc"}
    c, m = harness.write_tables(tmp_path / "t", "x", ["a", "b"], [[1, None], ["s", 2.5]], ["# t", "| a |"], meta)
    assert list(csv.reader(open(c))) == [["a", "b", "gpu_or_cpu", "commit"], ["1", "", "cpu", "abc"],
                                          ["s", "2.5", "cpu", "abc"]]  # fmt: skip
    assert m.read_text() == "# t\n| a |\n"
    case = dict(op="select_smallest")
    rows = [harness.Row(case | dict(n=n), p, ms, note=note) for n, p, ms, note in
            [(10, "fls", 0.5, ""), (10, "copy", 0.1, ""), (20, "fls", None, "not timed")]]  # fmt: skip
    c, m = select.write(rows, tmp_path, "cpu")
    table = list(csv.DictReader(open(c)))
    assert [(r["n"], r["ms"], r["note"]) for r in table] == [("10", "0.5000", ""), ("10", "0.1000", ""),
                                                             ("20", "", "not timed")]  # fmt: skip
    assert all(r["commit"] and r["cpu_threads"] for r in table)
    assert "| 10 | copy | 0.10 | 0.2× | 1.00 |" in m.read_text()
