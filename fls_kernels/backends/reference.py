"""The reference backend: ``fls_reference`` behind the registry. Runs on every device and float dtype."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fls_kernels.backends import Backend


def _load() -> dict[str, Callable]:
    import fls_reference as ref

    return {
        "kron_qv": ref.kron_qv,
        "kron_diag": ref.kron_diag,
        "obs_scores": ref.obs_scores,
        "select_smallest": ref.select_smallest,
        "select_nm": ref.select_nm,
        "surgeon_update_": ref.surgeon_update_,
        "kron_qv_grouped": ref.kron_qv_grouped,
        "surgeon_update_grouped_": ref.surgeon_update_grouped_,
    }


BACKENDS = [
    Backend(
        name="reference",
        priority=0,
        devices=("cpu", "cuda", "meta", "mps", "xpu"),
        dtypes=(torch.float64, torch.float32, torch.bfloat16, torch.float16),
        loader=_load,
    )
]
