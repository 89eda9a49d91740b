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
namespace {

void check_q_block(const at::Tensor& X, const char* x_name, const at::Tensor& A, const at::Tensor& G_R,
                   const at::Tensor& G_L) {
  TORCH_CHECK_VALUE(X.dim() == 2, x_name, ": expected a matrix, got ", X.sizes());
  const int64_t m = X.size(0), n = X.size(1);
  check_matrix(A, "A", m, n);
  check_matrix(G_R, "G_R", m, m);
  check_matrix(G_L, "G_L", n, n);
  for (auto [t, name] : {std::pair{&A, "A"}, std::pair{&G_R, "G_R"}, std::pair{&G_L, "G_L"}}) {
    check_dtype(*t, name, X.scalar_type());
    check_device(*t, name, X, x_name);
  }
}

}  // namespace

void kron_qv(const at::Tensor& V, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
             const std::string& precision, at::Tensor& out) {
  check_q_block(V, "V", A_in, G_R, G_L);
  check_precision(precision);
  check_matrix(out, "out", V.size(0), V.size(1));
  check_dtype(out, "out", V.scalar_type());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
  const auto A = A_in.contiguous();
  const auto P = at::mm(at::mm(G_R, A * V), G_L);
  at::mul_out(out, A, P);
}

void surgeon_update(at::Tensor& W, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
                    const at::Tensor& r_in, const at::Tensor& l_in, const at::Tensor& prune_in,
                    const at::Tensor& keep_in, const std::string& precision) {
  check_q_block(W, "W", A_in, G_R, G_L);
  check_precision(precision);
  const int64_t m = W.size(0), n = W.size(1);
  check_vector(r_in, "r", m);
  check_vector(l_in, "l", n);
  check_matrix(prune_in, "prune", m, n);
  check_matrix(keep_in, "keep", m, n);
  for (auto [t, name] : {std::pair{&r_in, "r"}, std::pair{&l_in, "l"}}) {
    check_dtype(*t, name, W.scalar_type());
    check_device(*t, name, W, "W");
  }
  for (auto [t, name] : {std::pair{&prune_in, "prune"}, std::pair{&keep_in, "keep"}}) {
    check_dtype(*t, name, at::kBool);
    check_device(*t, name, W, "W");
  }
  TORCH_CHECK_VALUE(W.is_contiguous(), "W: must be contiguous to be updated in place");
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
