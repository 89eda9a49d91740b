"""fls_reference: the pure-PyTorch oracle of every fls_kernels op, written straight from the method.

One readable function per op contract. It imports nothing but torch, computes in the dtype it is given
(float64 included) and ignores speed. ``dense`` holds the explicit-matrix forms that verify it.
"""

from fls_reference.grouped import kron_qv_grouped, surgeon_update_grouped_
from fls_reference.kron import kron_diag, kron_qv
from fls_reference.scores import obs_scores
from fls_reference.select import select_nm, select_smallest
from fls_reference.surgeon import surgeon_update_

__all__ = [
    "kron_diag",
    "kron_qv",
    "kron_qv_grouped",
    "obs_scores",
    "select_nm",
    "select_smallest",
    "surgeon_update_",
    "surgeon_update_grouped_",
]
