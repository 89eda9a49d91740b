// CPU kernels of the Q products: Q(V) = A ⊙ (G_R (A ⊙ V) G_L) and the in-place surgeon update.
// The GEMMs go to ATen's BLAS (fp32 accumulate; `precision` only matters on GPUs); the prologue that
// forms A ⊙ Z and the epilogue that scales, subtracts and masks are fused single passes.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "../ops.h"
#include "blend.h"

namespace fls::cpu {
void kron_qv(const at::Tensor& V, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
             const std::string& precision, at::Tensor& out) {
  check_qv_args(V, A_in, G_R, G_L, precision, out);
  const auto A = A_in.contiguous();
  const auto P = at::mm(at::mm(G_R, A * V), G_L);
  at::mul_out(out, A, P);
}

void surgeon_update(at::Tensor& W, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
                    const at::Tensor& r_in, const at::Tensor& l_in, const at::Tensor& prune_in,
                    const at::Tensor& keep_in, const std::string& precision) {
  check_surgeon_args(W, A_in, G_R, G_L, r_in, l_in, prune_in, keep_in, precision);
  const int64_t m = W.size(0), n = W.size(1);
  const auto A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const auto prune = prune_in.contiguous(), keep = keep_in.contiguous();
  auto AZ = at::empty_like(W);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "fls_surgeon_update_cpu", [&] {
    const scalar_t *a = A.const_data_ptr<scalar_t>(), *rp = r.const_data_ptr<scalar_t>(),
                   *lp = l.const_data_ptr<scalar_t>();
    const bool *pr = prune.const_data_ptr<bool>(), *kp = keep.const_data_ptr<bool>();
    scalar_t* w = W.mutable_data_ptr<scalar_t>();
    scalar_t* az = AZ.mutable_data_ptr<scalar_t>();
    const auto pr_bytes = reinterpret_cast<const uint8_t*>(pr), kp_bytes = reinterpret_cast<const uint8_t*>(kp);
    const int64_t rows_per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
    // Prologue: A ⊙ Z = prune ⊙ W ⊘ (A ⊙ r lᵀ)  (one factor of A cancels against diag Q = A² r lᵀ).
    // Inner loops are branch-free (blend) so they vectorise.
    at::parallel_for(0, m, rows_per_task, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t ri = rp[i];
        for (int64_t q = i * n, j = 0; j < n; ++j, ++q) {
          az[q] = blend(pr_bytes[q], w[q] / (a[q] * (ri * lp[j])), scalar_t(0));
        }
      }
    });
    const auto T = at::mm(at::mm(G_R, AZ), G_L);
    const scalar_t* t = T.const_data_ptr<scalar_t>();
    // Epilogue: W ← keep ⊙ (W − A ⊙ T).
    at::parallel_for(0, m * n, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) w[q] = blend(kp_bytes[q], w[q] - a[q] * t[q], scalar_t(0));
    });
  });
}

}  // namespace fls::cpu
