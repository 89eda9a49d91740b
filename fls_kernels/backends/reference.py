"""The reference backend: ``fls_reference`` behind the registry. Runs on every device and float dtype."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fls_kernels.backends import Backend, table


def _load() -> dict[str, Callable]:
    import fls_reference

    return {name: getattr(fls_reference, name) for name in table.NAMES}


BACKENDS = [
    Backend(
        name="reference",
        priority=0,
        devices=("cpu", "cuda", "meta", "mps", "xpu"),
        dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
        loader=_load,
    )
]
