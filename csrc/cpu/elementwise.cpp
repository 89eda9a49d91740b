// CPU kernels of the elementwise ops: diag(Q) = A² ⊙ r lᵀ and the OBS scores W² / (2 diag Q).
// Rows are split across threads with at::parallel_for; diag Q is never stored by obs_scores.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <cstdint>
#include <limits>

#include "../ops.h"
#include "blend.h"

namespace fls::cpu {
void kron_diag(const at::Tensor& A_in, const at::Tensor& r_in, const at::Tensor& l_in, at::Tensor& out) {
  check_diag_args(A_in, r_in, l_in, out);
  const auto A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const int64_t m = A.size(0), n = A.size(1);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "fls_kron_diag_cpu", [&] {
    const scalar_t *a = A.const_data_ptr<scalar_t>(), *rp = r.const_data_ptr<scalar_t>(),
                   *lp = l.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t ri = rp[i];
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t aij = a[i * n + j];
          o[i * n + j] = aij * aij * (ri * lp[j]);
        }
      }
    });
  });
}

void obs_scores(const at::Tensor& W_in, const at::Tensor& A_in, const at::Tensor& r_in, const at::Tensor& l_in,
                const at::Tensor& mask_in, at::Tensor& out) {
  check_obs_args(W_in, A_in, r_in, l_in, mask_in, out);
  const int64_t m = W_in.size(0), n = W_in.size(1);
  const auto W = W_in.contiguous(), A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const auto mask = mask_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "fls_obs_scores_cpu", [&] {
    const scalar_t *w = W.const_data_ptr<scalar_t>(), *a = A.const_data_ptr<scalar_t>(),
                   *rp = r.const_data_ptr<scalar_t>(), *lp = l.const_data_ptr<scalar_t>();
    const bool* alive = mask.const_data_ptr<bool>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
    // One row per inner loop, branch-free (blend), so it vectorises.
    at::parallel_for(0, m, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t ri = rp[i];
        const scalar_t *wi = w + i * n, *ai = a + i * n;
        const uint8_t* alive_i = reinterpret_cast<const uint8_t*>(alive + i * n);
        scalar_t* oi = o + i * n;
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t diag = ai[j] * ai[j] * (ri * lp[j]);
          const scalar_t rho = wi[j] * wi[j] / (scalar_t(2) * diag);
          oi[j] = blend(alive_i[j], rho, inf);
        }
      }
    });
  });
}

}  // namespace fls::cpu
