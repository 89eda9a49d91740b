"""``python -m fls_kernels``: every bad argument is refused up front (exit 2, one line naming it, nothing trained),
``--help`` shows the defaults, and ``info`` says what is actually missing for each backend."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time

import pytest
import torch

from fls_kernels import backends, compare, demo
from fls_kernels.__main__ import main


@pytest.fixture
def no_work(monkeypatch):
    """Training, fitting or pruning anything fails the test: validation must come first."""

    def trained(*args, **kwargs):
        raise AssertionError("work started before the arguments were validated")

    monkeypatch.setattr(compare, "demo_model", trained)
    monkeypatch.setattr(compare, "run", trained)
    monkeypatch.setattr(demo, "run", trained)
    monkeypatch.setattr(demo, "train", trained)


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a CUDA device (and without the Triton interpreter)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def _fresh(name: str, **changes) -> backends.Backend:
    """A copy of the registered backend ``name`` that loads again (with ``changes``)."""
    return dataclasses.replace(backends.get_backend(name), _kernels=None, _error=None, **changes)


def _raises(exc: Exception):
    def loader():
        raise exc

    return loader


def _refused(capsys, argv: list[str]) -> str:
    """Run the CLI in-process, expect argparse's refusal; return its one-line reason."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert time.perf_counter() - start < 1.0, "validation should take well under a second"
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    reason = captured.err.strip().splitlines()[-1]
    assert reason.startswith(f"python -m fls_kernels {argv[0]}: error: ")
    return reason


@pytest.mark.parametrize(
    ("argv", "argument", "says"),
    [
        (["--sparsity", "1.5"], "--sparsity", "[0, 1)"),
        (["--sparsity", "1"], "--sparsity", "[0, 1)"),
        (["--sparsity", "-0.1"], "--sparsity", "[0, 1)"),
        (["--sparsity", "nan"], "--sparsity", "[0, 1)"),
        (["--sparsity", "half"], "--sparsity", "'half'"),
        (["--fit-steps", "0"], "--fit-steps", "≥ 1"),
        (["--fit-steps", "-5"], "--fit-steps", "≥ 1"),
        (["--fit-steps", "1.5"], "--fit-steps", "whole number"),
        (["--device", "tpu"], "--device", "invalid choice"),
        (["--backends", "nosuch"], "--backends", "unknown backend 'nosuch' (known: "),
        (["--backends", "reference", "nosuch"], "--backends", "unknown backend 'nosuch'"),
        (["--model", "no_colon"], "--model", "package.module:function"),
        (["--model", "no_such_module_xyz:make"], "--model", "No module named 'no_such_module_xyz'"),
        (["--model", "fls_kernels.compare:no_such_function"], "--model", "no_such_function"),
    ],
)
def test_compare_refuses_a_bad_argument(capsys, no_work, argv, argument, says):
    reason = _refused(capsys, ["compare", *argv])
    assert f"argument {argument}: " in reason and says in reason


def test_compare_refuses_cuda_without_cuda(capsys, no_work, no_cuda):
    reason = _refused(capsys, ["compare", "--device", "cuda"])
    assert "argument --device: cuda requested but torch" in reason and "--device cpu" in reason


def test_compare_refuses_a_backend_that_cannot_load(capsys, no_work, monkeypatch):
    broken = backends.Backend(
        "broken", -1, ("cpu",), (torch.float32,), _raises(ModuleNotFoundError("No module named 'fancy'")), "fix it"
    )
    monkeypatch.setitem(backends._REGISTRY, "broken", broken)
    reason = _refused(capsys, ["compare", "--device", "cpu", "--backends", "broken"])
    assert "argument --backends: backend 'broken' is not available here: ModuleNotFoundError" in reason
    assert "fix: fix it" in reason


def test_compare_refuses_a_backend_for_another_device(capsys, no_work, monkeypatch):
    kernels = backends.get_backend("reference").kernels
    gpu_only = backends.Backend("gpu_only", -1, ("cuda",), (torch.float32,), lambda: kernels)
    monkeypatch.setitem(backends._REGISTRY, "gpu_only", gpu_only)
    reason = _refused(capsys, ["compare", "--device", "cpu", "--backends", "gpu_only"])
    assert "argument --backends: backend 'gpu_only' does not run on cpu (it runs on cuda)" in reason


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_compare_refuses_triton_without_cuda_with_the_real_reason(capsys, no_work, no_cuda, monkeypatch):
    no_device = RuntimeError("no CUDA device and TRITON_INTERPRET is not 1")
    monkeypatch.setitem(backends._REGISTRY, "triton", _fresh("triton", devices=("cuda",), loader=_raises(no_device)))
    reason = _refused(capsys, ["compare", "--backends", "triton"])
    assert "argument --backends: backend 'triton' is not available here" in reason
    assert "TRITON_INTERPRET" in reason and "install" not in reason


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["--seeds", "0"], "--seeds"),
        (["--fit-steps", "0"], "--fit-steps"),
        (["--sparsities", "0.5", "1.0"], "--sparsities"),
    ],
)
def test_demo_refuses_a_bad_argument(capsys, no_work, argv, argument):
    assert f"argument {argument}: " in _refused(capsys, ["demo", *argv])


@pytest.mark.parametrize("command", ["compare", "demo"])
def test_help_shows_the_defaults(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert "(default: " in out
    if command == "compare":
        assert "(default: 0.5)" in out and "(default: 100)" in out and "(default: auto)" in out
    else:
        assert "(default: 3)" in out and "(default: 1500)" in out and "(default: out/demo)" in out


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_info_triton_installed_without_cuda_does_not_say_install(capsys, no_cuda, monkeypatch):
    no_device = RuntimeError("no CUDA device and TRITON_INTERPRET is not 1")
    monkeypatch.setitem(backends._REGISTRY, "triton", _fresh("triton", devices=("cuda",), loader=_raises(no_device)))
    assert main(["info"]) == 0
    listed = capsys.readouterr().out.split("\nbackends ")[1]
    (line,) = [line for line in listed.splitlines() if line.strip().startswith("triton ")]
    assert "unavailable" in line and "TRITON_INTERPRET" in line and "CUDA" in line
    assert "install" not in line.lower()


def test_info_triton_not_installed_says_install(capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    missing = ModuleNotFoundError("No module named 'triton'")
    monkeypatch.setitem(backends._REGISTRY, "triton", _fresh("triton", loader=_raises(missing)))
    problem, fix = compare.diagnose(backends.get_backend("triton"))
    assert "not installed" in problem and "pip install triton" in fix


def test_info_extension_not_built_says_build_it(monkeypatch):
    import_module = importlib.import_module

    def without_extension(name, *args):
        if name == "fls_kernels._C":
            raise ModuleNotFoundError("No module named 'fls_kernels._C'", name="fls_kernels._C")
        return import_module(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_extension)
    missing = ModuleNotFoundError("No module named 'fls_kernels._C'")
    monkeypatch.setitem(backends._REGISTRY, "cpu", _fresh("cpu", loader=_raises(missing)))
    problem, fix = compare.diagnose(backends.get_backend("cpu"))
    assert "not built" in problem and "FLS_BUILD_EXT=1" in fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_info_cuda_without_a_gpu_says_so(capsys):
    problem, fix = compare.diagnose(backends.get_backend("cuda"))
    assert "CPU-only build" in problem or "no CUDA device" in problem
    assert "NVIDIA GPU" in fix


def test_demo_prints_the_expected_time_before_it_starts(capsys, monkeypatch, tmp_path):
    printed_first = []

    def run(config):
        printed_first.append(capsys.readouterr().out)
        result = demo.DemoResult(config, dense=[0.9], seconds=1.0)
        result.accuracy = {("FLS", 0.5): [0.8], ("magnitude", 0.5): [0.5]}
        return result

    monkeypatch.setattr(demo, "run", run)
    monkeypatch.setattr(demo, "write", lambda result, out: [])
    assert main(["demo", "--seeds", "1", "--sparsities", "0.5", "--no-progress", "--out", str(tmp_path)]) == 0
    (before,) = printed_first
    assert "Expected time: about " in before and "a seed" in before
    assert "| 50% |" in capsys.readouterr().out
