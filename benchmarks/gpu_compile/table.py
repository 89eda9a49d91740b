"""The resource table: one row per compiled kernel and target, written as CSV and as a markdown summary."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import write_stamped_csv


@dataclass
class Row:
    """One kernel compiled for one target.

    ``family``: "triton", "cuda" (a ``__global__`` function of csrc/cuda) or "c++" (a host file of csrc built
    with FLS_WITH_CUDA, resources empty). ``spills``: bytes of spill stores + loads. ``shared``: bytes per
    program (static, for CUDA). ``tensor_cores``: "wgmma", "mma.sync" or "none". ``error``: empty when it
    compiled.
    """

    family: str
    kernel: str
    op: str = ""
    case: str = ""
    dtype: str = ""
    precision: str = ""
    config: str = ""
    target: str = ""
    warps: int = 0
    stages: int = 0
    registers: int = 0
    spills: int = 0
    shared: int = 0
    tensor_cores: str = ""
    programs_per_sm: int = 0
    seconds: float = 0.0
    error: str = ""


FIELDS = [f.name for f in dataclasses.fields(Row)]


def write_csv(rows: Sequence[Row], path: Path, stamp: dict[str, str]) -> None:
    """Every row, each carrying ``stamp`` (versions, commit, timestamp)."""
    values = ({**dataclasses.asdict(row), "seconds": f"{row.seconds:.2f}"} for row in rows)
    write_stamped_csv(path, FIELDS, ([v[k] for k in FIELDS] for v in values), stamp)


def read_csv(path: Path) -> list[Row]:
    """Rows written by :func:`write_csv` (the stamp columns dropped)."""
    types = {f.name: f.type for f in dataclasses.fields(Row)}
    cast = {"int": int, "float": float, "str": str}
    with path.open(newline="") as f:
        return [Row(**{k: cast[types[k]](v) for k, v in r.items() if k in types}) for r in csv.DictReader(f)]
