"""The one harness of the timing benchmarks (``kernels``, ``select``, ``fvp``, ``e2e``).

- :class:`Row`: one measurement — what was measured (``case``: the benchmark's identifying columns), by whom
  (``provider``: a backend, a variant, a baseline), its median ``ms``, its verified ``error``, a ``note`` (why it
  was not timed, or what it is) and the benchmark's further columns (``values``);
- :func:`measure`: the one rule of a row — not run (the provider cannot run here, or the run's time is spent:
  :class:`~benchmarks.timer.Deadline`), verified against the reference, then timed; a provider that disagrees
  with the reference, or fails, is not timed and its row says so;
- :func:`write`: the rows as a stamped CSV (:func:`stamp` on every row) and the benchmark's markdown, through
  :func:`write_tables`, which the quality studies' :func:`write_study` shares.
"""

from __future__ import annotations

import csv
import datetime
import platform
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks.timer import Deadline


class VerifyError(AssertionError):
    """A provider's output disagrees with the reference beyond its tolerance; ``error`` is the measured one (None
    for a mask or a missing output)."""

    def __init__(self, message: str, error: float | None = None) -> None:
        super().__init__(message)
        self.error = error


@dataclass
class Row:
    """One measurement; ``ms`` is None when it was not timed (``note`` says why). The identifying columns of
    ``case`` and the further columns of ``values`` read as attributes too (``row.op``, ``row.peak_mib``)."""

    case: dict[str, object]
    provider: str
    ms: float | None = None
    error: float | None = None
    note: str = ""
    values: dict[str, object] = field(default_factory=dict)

    def __getattr__(self, name: str) -> object:
        for part in ("case", "values"):
            columns = self.__dict__.get(part, {})
            if name in columns:
                return columns[name]
        raise AttributeError(f"{type(self).__name__} has no column {name!r}")


def failure(exc: BaseException) -> str:
    """One line naming why a call failed: the exception type, its first line and, for torch.compile, the op that
    stopped it."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    op = re.search(r"call_function <(?:built-in )?(?:function|method) ([\w.]+)", text)
    return f"{type(exc).__name__}: {first}" + (f" (at {op.group(1)})" if op else "")


def measure(
    case: dict[str, object],
    provider: str,
    time: Callable[[], float | tuple[float, dict]],
    *,
    verify: Callable[[], float | None] | None = None,
    unavailable: str | None = None,
    deadline: Deadline | None = None,
    note: str = "",
) -> Row:
    """The row of ``provider`` on ``case``: not run when ``unavailable`` says why or the ``deadline`` is spent;
    else ``verify()`` (its error; :class:`VerifyError` when it disagrees: not timed), then ``time()`` (ms, or ms and
    further columns). A call that raises is not timed either; its row names the exception ("failed: …"), or says
    "out of memory: …" (the CUDA cache then emptied; not a failure)."""
    why = unavailable or (deadline.note() if deadline is not None else None)
    if why is not None:
        return Row(case, provider, note=why)
    error = None
    try:
        if verify is not None:
            error = verify()
        timed = time()
    except VerifyError as exc:
        return Row(case, provider, error=exc.error, note=f"DISAGREES with the reference ({exc}): not timed")
    except torch.OutOfMemoryError as exc:  # the size is beyond this device: a fact of the run, not a failure
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return Row(case, provider, error=error, note=f"out of memory: {str(exc).strip().splitlines()[0]}")
    except Exception as exc:  # noqa: BLE001 — any failure to run a provider is its row's note
        return Row(case, provider, error=error, note=f"failed: {failure(exc)}")
    ms, values = timed if isinstance(timed, tuple) else (timed, {})
    return Row(case, provider, ms, error, note, dict(values))


def disagrees(row: Row) -> bool:
    """Whether the row's provider disagreed with the reference or failed."""
    return row.note.startswith(("DISAGREES", "failed:"))


def disagreements(rows: Iterable[Row]) -> list[Row]:
    """The rows that :func:`disagrees` (``kernels`` and ``select`` exit non-zero on them, after writing their
    tables)."""
    return [r for r in rows if disagrees(r)]


def _cell(value: object, digits: int) -> object:
    return f"{value:.{digits}f}" if isinstance(value, float) else value


def write(
    rows: Sequence[Row],
    out_dir: str | Path,
    name: str,
    markdown: list[str],
    meta: dict,
    *,
    provider: str = "provider",
    error: str = "error",
) -> tuple[Path, Path]:
    """``<name>.csv`` — the case columns, ``provider``, ms, ``error``, the further columns and the note of every
    row, stamped with ``meta`` — and ``<name>.md``, the benchmark's ``markdown`` lines (:func:`write_tables`)."""
    case = list(dict.fromkeys(k for r in rows for k in r.case))
    values = list(dict.fromkeys(k for r in rows for k in r.values))
    header = [*case, provider, "ms", error, *values, "note"]
    table = [
        [r.case.get(k) for k in case]
        + [r.provider, _cell(r.ms, 4), None if r.error is None else f"{r.error:.2e}"]
        + [_cell(r.values.get(k), 6) for k in values]
        + [r.note]
        for r in rows
    ]
    return write_tables(out_dir, name, header, table, markdown, meta)


def stamp(device: str) -> dict[str, str]:
    """Device, versions, commit and timestamp carried by every CSV row."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        if commit and dirty.stdout.strip():
            commit += "+uncommitted"
    except OSError:
        commit = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "gpu_or_cpu": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": commit or "unknown",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def stamp_line(device: str) -> str:
    """One line naming where and on what a result was measured."""
    meta = stamp(device)
    return f"Measured on {meta['gpu_or_cpu']}, torch {meta['torch']}, commit {meta['commit']}, {meta['timestamp']}."


def write_tables(
    out_dir: str | Path, name: str, header: list[str], rows: list[list[object]], markdown: list[str], meta: dict
) -> tuple[Path, Path]:
    """The two outputs of a timing benchmark in ``out_dir`` (created if needed): ``<name>.csv`` — ``header``, then
    each row of ``rows`` (None as an empty cell) with the stamp ``meta`` (:func:`stamp`) appended to every one —
    and ``<name>.md``, the lines of ``markdown``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    write_stamped_csv(csv_path, header, rows, meta)
    md_path.write_text("\n".join(markdown) + "\n")
    return csv_path, md_path


def write_stamped_csv(path: Path, header: list[str], rows: Iterable[Sequence[object]], meta: dict) -> Path:
    """``header`` and each row (None as an empty cell) with the stamp ``meta`` (:func:`stamp`) appended to every
    one; returns ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, *meta])
        for row in rows:
            w.writerow(["" if v is None else v for v in row] + list(meta.values()))
    return path


def write_study(
    out_dir: str | Path, name: str, fields: list[str], rows: list[dict], text: str, stamp: str
) -> tuple[Path, Path]:
    """The two outputs of a quality study in ``out_dir`` (created if needed): ``<name>.csv`` (:func:`write_csv` of
    ``rows`` over ``fields``) and ``<name>.md``, its table ``text`` and then the ``stamp`` line."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(f"{text}\n\n{stamp}\n")
    return write_csv(out / f"{name}.csv", fields, rows), md


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    """``rows`` as a CSV with a header of ``fields`` (other keys of a row are left out); returns ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


__all__ = [
    "Row",
    "VerifyError",
    "disagreements",
    "failure",
    "measure",
    "stamp",
    "stamp_line",
    "write",
    "write_csv",
    "write_stamped_csv",
    "write_study",
    "write_tables",
]
