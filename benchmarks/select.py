"""Global k-smallest selection on N scores: the native ``select_smallest`` against torch's own selections.

The scores are OBS-like (spread over many decades, 10% already pruned at +inf) and split over a few tensors,
as a model's layers are; k is half of the selectable ones. ``select_smallest`` reads the list in place; the
torch baselines get the scores already concatenated into one tensor (the concatenation is not timed) and
return values/indices rather than masks:

- ``torch.kthvalue``: the k-th smallest value (a threshold, not yet a mask);
- ``torch.topk(largest=False)``: the k smallest values and their indices;
- ``torch.sort``: a full stable sort (what the reference does);
- ``copy``: a yardstick, one device copy of the same scores (read once, written once), measured in the same run.

The native result is verified against the reference (fls_reference.select_smallest) before it is timed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

import fls_kernels as fls
import fls_reference as ref
from benchmarks import harness
from benchmarks.harness import Row, VerifyError, stamp
from benchmarks.timer import Deadline, median_ms

#: N per device: 10⁷ on the 2-core CPU; 1.1·10⁸ (a ResNet-50-sized model is 2.5·10⁷) and 10⁹ on a GPU.
SIZES = {"cpu": [10**7], "cuda": [110_000_000, 1_000_000_000]}


def make_scores(n: int, device: str, dtype: torch.dtype = torch.float32, parts: int = 4) -> list[torch.Tensor]:
    """``n`` scores exp(4·𝒩(0, 1)) in ``parts`` tensors of unequal sizes, 10% of them +inf."""
    g = torch.Generator(device=device).manual_seed(0)
    sizes = [n // (2 * parts)] * (parts - 1)
    sizes.append(n - sum(sizes))
    scores = []
    for size in sizes:
        s = torch.randn(size, generator=g, device=device, dtype=dtype).mul_(4).exp_()
        s[torch.rand(size, generator=g, device=device) < 0.1] = float("inf")
        scores.append(s)
    return scores


def verify(scores: list[torch.Tensor], k: int, backend: str) -> None:
    """The native masks equal the reference's, bit for bit; :class:`~benchmarks.harness.VerifyError` otherwise."""
    expected = ref.select_smallest(scores, k)
    got = fls.select_smallest(scores, k, backend=backend)
    for i, (g, e) in enumerate(zip(got, expected)):
        bad = int((g != e).sum())
        if bad:
            raise VerifyError(f"select_smallest/{backend}: {bad} entries of mask {i} differ from the reference")


#: provider option → its row's name (``native``: this device's backend)
PROVIDERS = {"native": "fls {device}", "kthvalue": "torch.kthvalue", "topk": "torch.topk", "sort": "torch.sort",
             "copy": "copy"}  # fmt: skip


def run_one(n: int, device: str, providers: list[str], deadline: Deadline | None = None) -> list[Row]:
    """Rows for N = ``n``: the native kernel (verified first) and the torch baselines named in ``providers`` (the
    scores are not even built once the ``deadline`` is spent)."""
    case, chosen = dict(op="select_smallest", n=n), [p for p in PROVIDERS if p in providers]
    if deadline is not None and deadline.spent():
        return [Row(case, PROVIDERS[p].format(device=device), note=deadline.note()) for p in chosen]
    scores = make_scores(n, device)
    k = sum(int((s < float("inf")).sum()) for s in scores) // 2
    flat = torch.cat(scores) if set(chosen) - {"native", "copy"} else None
    copies = [torch.empty_like(t) for t in scores] if "copy" in chosen else []
    calls = {
        "native": lambda: fls.select_smallest(scores, k, backend=device),
        "kthvalue": lambda: torch.kthvalue(flat, k),
        "topk": lambda: torch.topk(flat, k, largest=False),
        "sort": lambda: torch.sort(flat, stable=True),
        "copy": lambda: [c.copy_(t) for c, t in zip(copies, scores)],
    }
    native = fls.backends.get_backend(device).reason("select_smallest", torch.device(device), torch.float32)
    rows = []
    for p in chosen:
        name = PROVIDERS[p].format(device=device)
        row = harness.measure(
            case,
            name,
            functools.partial(median_ms, calls[p], device, min_run_time=1.0, num_threads=torch.get_num_threads()),
            verify=functools.partial(verify, scores, k, device) if p == "native" else None,
            unavailable=native if p == "native" else None,
            deadline=deadline,
        )
        rows.append(row)
        shown = f"{row.ms:10.2f} ms" if row.ms is not None else row.note
        print(f"select_smallest N={n:>13,} {name:16} {shown}")
    return rows


def run(device: str, sizes: list[int], providers: list[str], seconds: float | None = None) -> list[Row]:
    """Rows for every N of ``sizes``; with ``seconds``, measurements not started by then are listed as not timed."""
    deadline = Deadline(seconds)
    return [row for n in sizes for row in run_one(n, device, providers, deadline)]


def write(rows: list[Row], out_dir: str | Path, device: str) -> tuple[Path, Path]:
    """CSV (stamped with device, versions, commit, time, threads) and a markdown table of ratios."""
    meta = stamp(device) | {"cpu_threads": str(torch.get_num_threads())}
    lines = [
        f"select_smallest, k = half of the scores below +inf. Device {meta['gpu_or_cpu']} "
        f"({meta['cpu_threads']} CPU threads), torch {meta['torch']}, commit {meta['commit']}, {meta['timestamp']}.",
        "",
        "| N | provider | ms | time / fls time | time / copy |",
        "|---:|---|---:|---:|---:|",
    ]
    ours = {r.n: r.ms for r in rows if r.provider.startswith("fls") and r.ms is not None}
    copy = {r.n: r.ms for r in rows if r.provider == "copy" and r.ms is not None}
    for r in rows:
        if r.ms is None:
            lines.append(f"| {r.n:,} | {r.provider} | — | {r.note} | — |")
            continue
        ratio = f"{r.ms / ours[r.n]:.1f}×" if r.n in ours else "—"
        over_copy = f"{r.ms / copy[r.n]:.2f}" if r.n in copy else "—"
        lines.append(f"| {r.n:,} | {r.provider} | {r.ms:.2f} | {ratio} | {over_copy} |")
    return harness.write(rows, out_dir, f"select-{device}", lines, meta)
