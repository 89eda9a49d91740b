"""Every launch the Triton wrappers make, recorded instead of run: (kernel, signature, constexprs, attributes,
num_warps, num_stages), exactly as Triton's JIT would compile it on the target.

The wrappers run on small CPU tensors under a stand-in driver that reports the target (its compute capability
and shared-memory limit, which the autotuner's pruning reads) and a ``jit_cache_hook`` that records each compile
request and cancels it, so nothing is compiled or launched here and the signatures, the specialisations
(16-divisible sizes, unit strides) and the constexprs are the JIT's own. Autotuned kernels are made to pick
the i-th config their pruning keeps, for every i, so every config that can be kept for a problem is recorded
(and a kernel that reuses another's tuned config, as the grouped surgeon update's second pass, gets each one).

Must run without ``TRITON_INTERPRET`` (the kernels read it at import: :mod:`benchmarks.gpu_compile.__main__`
refuses it).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, KernelInterface

from benchmarks.gpu_compile import Target
from fls_kernels.backends import table
from fls_kernels.backends.triton import BACKENDS

TRITON_PACKAGE = "fls_kernels.backends.triton"
#: Input dtypes the Triton backend accepts (its registry entry), and the GEMM modes of ``precision=``.
DTYPES: tuple[torch.dtype, ...] = BACKENDS[0].dtypes
PRECISIONS: tuple[str, ...] = table.PRECISIONS


@dataclass(frozen=True)
class Launch:
    """One compile request of a kernel, and the wrapper call that made it (op, case, dtype, precision)."""

    op: str
    case: str
    dtype: str
    precision: str
    kernel: JITFunction = field(compare=False)
    signature: dict = field(compare=False)
    constexprs: dict = field(compare=False)
    attrs: dict = field(compare=False)
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def meta(self) -> dict:
        """Constexpr parameters by name (the kernel's own; arguments specialised to constants left out)."""
        params = self.kernel.params
        return {params[path[0]].name: v for path, v in self.constexprs.items() if params[path[0]].is_constexpr}

    @property
    def config(self) -> str:
        """The tile config: BLOCK_M×BLOCK_N×BLOCK_K of a GEMM, the block shape of the others."""
        meta = self.meta
        blocks = [str(meta[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_R", "BLOCK_G") if k in meta]
        return "×".join(blocks)

    @property
    def binary(self) -> tuple:
        """What makes the compiled kernel: launches equal here compile to the same binary."""
        return (self.kernel.fn.__qualname__, repr(self.signature), repr(self.constexprs), repr(self.attrs),
                self.num_warps, self.num_stages)  # fmt: skip


# ------------------------------------------------------------------------------------------------ stand-in driver
class _Utils:
    def __init__(self, target: Target):
        self.target = target

    def get_device_properties(self, device: int) -> dict:
        return {"max_shared_mem": self.target.max_shared, "multiprocessor_count": self.target.sms}


class CaptureDriver:
    """What Triton's JIT and the configs' pruning ask of the active driver, answered for ``target``."""

    def __init__(self, target: Target):
        self.target = GPUTarget("cuda", target.cc, 32)
        self.utils = _Utils(target)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return self.target.arch  # one device (and so one JIT cache) per target

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextlib.contextmanager
def standing_in(target: Target) -> Iterator[None]:
    """Triton's active driver replaced by :class:`CaptureDriver` for ``target`` (restored on exit)."""
    previous = driver._active
    driver.set_active(CaptureDriver(target))
    try:
        yield
    finally:
        driver._active = previous


@contextlib.contextmanager
def recording(sink: list[dict], pick: Callable[[], int]) -> Iterator[None]:
    """JIT compile requests appended to ``sink`` and cancelled; autotuned kernels run the ``pick()``-th config
    their pruning keeps (the last when there are fewer), without benchmarking."""

    def hook(*, key, repr, fn, compile, is_manual_warmup, already_compiled):
        sink.append(dict(kernel=fn.jit_function, **compile))
        return True  # handled: the JIT compiles nothing and launches nothing

    def run(self, *args, **kwargs):
        kwargs.pop("warmup", None)
        self.nargs = dict(zip(self.arg_names, args))
        kept = self.prune_configs(kwargs)
        self.best_config = kept[min(pick(), len(kept) - 1)]
        self.fn.run(*args, **kwargs, **self.best_config.all_kwargs(), warmup=True)
        self.nargs = None

    original = Autotuner.run
    Autotuner.run = run
    try:
        with knobs.runtime.scope():
            knobs.runtime.jit_cache_hook = hook
            yield
    finally:
        Autotuner.run = original


# ---------------------------------------------------------------------------------------------------- the calls
@dataclass(frozen=True)
class Case:
    """A problem to call an op on: one layer (m, n), a list of layers, or an N:M selection."""

    name: str
    shapes: tuple[tuple[int, int], ...]
    nm: tuple[int, int] = (2, 4)
    #: False: the first config kept only (a case that changes a size constexpr, not the tiles' code paths)
    every_config: bool = True


def _layer(m: int, n: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A layer's arguments (zeros: only shapes, dtypes, strides and alignment reach the compiler)."""
    shapes = dict(W=(m, n), A=(m, n), G_R=(m, m), G_L=(n, n), r=(m,), l=(n,))
    return {**{k: torch.zeros(s, dtype=dtype) for k, s in shapes.items()},
            "mask": torch.zeros(m, n, dtype=torch.bool), "keep": torch.zeros(m, n, dtype=torch.bool)}  # fmt: skip


#: Per-layer op → its positional arguments from :func:`_layer` (and the case); a grouped op takes its layer
#: op's as lists. :func:`wrappers` refuses an op with a Triton module that is missing here.
ARGS: dict[str, Callable[[dict, Case], tuple]] = {
    "kron_qv": lambda t, c: (t["W"], t["A"], t["G_R"], t["G_L"]),
    "kron_diag": lambda t, c: (t["A"], t["r"], t["l"]),
    "obs_scores": lambda t, c: (t["W"], t["A"], t["r"], t["l"], t["mask"]),
    "select_nm": lambda t, c: (t["W"], *c.nm),
    "surgeon_update_": lambda t, c: (t["W"], t["A"], t["G_R"], t["G_L"], t["r"], t["l"], t["mask"], t["keep"]),
}

_GEMM = (Case("aligned 256×256", ((256, 256),)), Case("unaligned 257×255", ((257, 255),)))
_GROUPS = (
    Case("aligned 256×256, 64×128", ((256, 256), (64, 128))),
    Case("unaligned 257×255, 7×100", ((257, 255), (7, 100))),
    Case("72 layers", ((256, 256),) + ((16, 16),) * 71, every_config=False),  # LAYERS_POW2 = 128
)
_ELEMENTWISE = tuple(Case(f"{m}×{n}", ((m, n),)) for m, n in ((1, 1), (5, 17), (64, 64), (768, 3072)))
_NM = tuple(
    Case(f"{m}×{n}, {a}:{b}", ((m, n),), (a, b))
    for m, n in ((1, 16), (768, 3072))
    for a, b in ((2, 4), (4, 8), (8, 16))
)
#: The full sweep's problems per op: every config kept (sizes ≥ 256), every specialisation and constexpr branch
#: (aligned or not, 16-divisible or not, unit sizes, N:M patterns, the table's padding).
FULL: dict[str, tuple[Case, ...]] = {
    "kron_qv": _GEMM, "surgeon_update_": _GEMM, "kron_qv_grouped": _GROUPS, "surgeon_update_grouped_": _GROUPS,
    "kron_diag": _ELEMENTWISE, "obs_scores": _ELEMENTWISE, "select_nm": _NM,
}  # fmt: skip
#: The CI subset: one problem per op, fp32 inputs, the first config kept (64×64×32 for the GEMMs).
CI: dict[str, tuple[Case, ...]] = {
    "kron_qv": (Case("64×64", ((64, 64),)),), "surgeon_update_": (Case("64×64", ((64, 64),)),),
    "kron_qv_grouped": (Case("64×64, 48×32", ((64, 64), (48, 32))),),
    "surgeon_update_grouped_": (Case("64×64, 48×32", ((64, 64), (48, 32))),),
    "kron_diag": (Case("768×3072", ((768, 3072),)),), "obs_scores": (Case("768×3072", ((768, 3072),)),),
    "select_nm": (Case("768×3072, 2:4", ((768, 3072),), (2, 4)),),
}  # fmt: skip


def wrappers() -> dict[str, Callable]:
    """Op name → its Triton launcher, for every op of the table with a module in the Triton backend."""
    found = {}
    for op in table.TABLE:
        try:
            module = importlib.import_module(f"{TRITON_PACKAGE}.{op.stem}")
        except ModuleNotFoundError:
            continue
        if (op.layer_op or op.name) not in ARGS:
            raise KeyError(f"{op.name}: no arguments in benchmarks.gpu_compile.capture.ARGS")
        found[op.name] = getattr(module, op.name)
    return found


def kernels() -> set[str]:
    """Names of every launchable kernel (``*_kernel``, plain or autotuned, compiled or interpreted) defined in the
    Triton backend's modules."""
    found = set()
    for op in table.TABLE:
        try:
            module = importlib.import_module(f"{TRITON_PACKAGE}.{op.stem}")
        except ModuleNotFoundError:
            continue
        for name, obj in vars(module).items():
            fn = obj
            while hasattr(fn, "fn"):  # Autotuner → JITFunction (or InterpretedFunction) → the Python function
                fn = fn.fn
            if name.endswith("_kernel") and isinstance(obj, KernelInterface) and fn.__module__ == module.__name__:
                found.add(name)
    return found


def _call(op: str, fn: Callable, case: Case, dtype: torch.dtype, precision: str) -> None:
    spec = table.get(op)
    layers = [_layer(m, n, dtype) for m, n in case.shapes]
    args = ARGS[spec.layer_op or spec.name]
    if spec.grouped:
        per_layer = [args(t, case) for t in layers]
        positional = tuple(list(column) for column in zip(*per_layer))
    else:
        positional = args(layers[0], case)
    fn(*positional, **({"precision": precision} if spec.precision else {}))


def launches(target: Target, plan: dict[str, tuple[Case, ...]] = FULL, *, every_config: bool = True) -> list[Launch]:
    """Every distinct launch of the ops in ``plan`` on its cases, for ``target``, in every precision mode: with
    fp32 inputs each config the pruning keeps (the first only unless ``every_config`` and the case's), with the
    other input dtypes the first config kept (the largest tile: the most shared memory); fp32 inputs only
    unless ``every_config``. A launch compiling to the same binary as an earlier one is left out."""
    dtypes = DTYPES if every_config else (torch.float32,)
    found: dict[tuple, Launch] = {}
    for op, fn in wrappers().items():
        spec = table.get(op)
        for case in plan[op]:
            for dtype in dtypes:
                configs = _most_configs() if every_config and case.every_config and dtype == torch.float32 else 1
                for precision in PRECISIONS if spec.precision else ("",):
                    for index in range(configs):
                        sink: list[dict] = []
                        with standing_in(target), recording(sink, lambda i=index: i):
                            _call(op, fn, case, dtype, precision)
                        for r in sink:
                            launch = Launch(
                                op=op, case=case.name, dtype=str(dtype).removeprefix("torch."), precision=precision,
                                kernel=r["kernel"], signature=r["signature"], constexprs=r["constants"],
                                attrs=r["configs"][0], num_warps=r["num_warps"], num_stages=r["num_stages"],
                            )  # fmt: skip
                            found.setdefault(launch.binary, launch)
    return list(found.values())


def _most_configs() -> int:
    """The longest autotune config list of any kernel (every kept config has an index below it)."""
    from fls_kernels.backends.triton._common import gemm_configs

    return len(gemm_configs())
