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

from dataclasses import dataclass
from pathlib import Path

import torch

import fls_kernels as fls
import fls_reference as ref
from benchmarks.runner import stamp, write_tables
from benchmarks.timer import Deadline, median_ms

#: N per device: 10⁷ on the 2-core CPU; 1.1·10⁸ (a ResNet-50-sized model is 2.5·10⁷) and 10⁹ on a GPU.
SIZES = {"cpu": [10**7], "cuda": [110_000_000, 1_000_000_000]}


@dataclass
class Row:
    n: int
    provider: str
    ms: float | None
    note: str = ""


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
    """The native masks equal the reference's, bit for bit; AssertionError otherwise."""
    expected = ref.select_smallest(scores, k)
    got = fls.select_smallest(scores, k, backend=backend)
    for i, (g, e) in enumerate(zip(got, expected)):
        bad = int((g != e).sum())
        assert bad == 0, f"select_smallest/{backend}: {bad} entries of mask {i} differ from the reference"


def run_one(n: int, device: str, providers: list[str]) -> list[Row]:
    """Rows for N = ``n``: the native kernel (verified first) and the torch baselines named in ``providers``."""
    scores = make_scores(n, device)
    k = sum(int((s < float("inf")).sum()) for s in scores) // 2
    rows, calls = [], {}
    if "native" in providers:
        why = fls.backends.get_backend(device).reason("select_smallest", torch.device(device), torch.float32)
        if why is None:
            verify(scores, k, device)
            calls[f"fls {device}"] = lambda: fls.select_smallest(scores, k, backend=device)
        else:
            rows.append(Row(n, f"fls {device}", None, why))
    flat = torch.cat(scores) if set(providers) - {"native", "copy"} else None
    if "kthvalue" in providers:
        calls["torch.kthvalue"] = lambda: torch.kthvalue(flat, k)
    if "topk" in providers:
        calls["torch.topk"] = lambda: torch.topk(flat, k, largest=False)
    if "sort" in providers:
        calls["torch.sort"] = lambda: torch.sort(flat, stable=True)
    if "copy" in providers:
        copies = [torch.empty_like(t) for t in scores]
        calls["copy"] = lambda: [c.copy_(t) for c, t in zip(copies, scores)]
    for name, fn in calls.items():
        try:
            rows.append(Row(n, name, median_ms(fn, device, min_run_time=1.0, num_threads=torch.get_num_threads())))
        except torch.OutOfMemoryError as exc:
            rows.append(Row(n, name, None, f"out of memory: {str(exc).splitlines()[0]}"))
            torch.cuda.empty_cache()
        ms = rows[-1].ms
        print(f"select_smallest N={n:>13,} {name:16} " + (f"{ms:10.2f} ms" if ms is not None else rows[-1].note))
    return rows


def run(device: str, sizes: list[int], providers: list[str], seconds: float | None = None) -> list[Row]:
    """Rows for every N of ``sizes``; with ``seconds``, sizes not started by then are listed as not timed."""
    rows, deadline = [], Deadline(seconds)
    for n in sizes:
        if deadline.spent():
            rows += [Row(n, p, None, deadline.note()) for p in providers]
            continue
        rows += run_one(n, device, providers)
    return rows


def write(rows: list[Row], out_dir: str | Path, device: str) -> tuple[Path, Path]:
    """CSV (stamped with device, versions, commit, time, threads) and a markdown table of ratios."""
    meta = stamp(device) | {"cpu_threads": str(torch.get_num_threads())}
    header = ["op", "n", "provider", "ms", "note"]
    table = [["select_smallest", r.n, r.provider, "" if r.ms is None else f"{r.ms:.4f}", r.note] for r in rows]
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
    return write_tables(out_dir, f"select-{device}", header, table, lines, meta)
