// CUDA kernels of the elementwise ops: diag(Q) = A² ⊙ r lᵀ and the OBS scores ρ = W² / (2 diag Q)
// (+inf where the mask is False). One grid-stride pass each over the m×n entries; diag Q is never stored.
#include <ATen/Dispatch.h>

#include <limits>

#include "../ops.h"
#include "launch.cuh"

namespace fls::cuda {
namespace {

template <typename T>
__global__ void kron_diag_kernel(const T* __restrict__ a, const T* __restrict__ r, const T* __restrict__ l,
                                 T* __restrict__ out, int64_t m, int64_t n) {
  const int64_t total = m * n;
  FLS_GRID_STRIDE(q, total) {
    const int64_t i = q / n, j = q - i * n;
    const T aq = a[q];
    out[q] = aq * aq * (r[i] * l[j]);
  }
}

template <typename T>
__global__ void obs_scores_kernel(const T* __restrict__ w, const T* __restrict__ a, const T* __restrict__ r,
                                  const T* __restrict__ l, const bool* __restrict__ alive, T* __restrict__ out,
                                  int64_t m, int64_t n, T inf) {
  const int64_t total = m * n;
  FLS_GRID_STRIDE(q, total) {
    const int64_t i = q / n, j = q - i * n;
    const T aq = a[q], wq = w[q];
    const T diag = aq * aq * (r[i] * l[j]);
    out[q] = alive[q] ? wq * wq / (T(2) * diag) : inf;
  }
}

}  // namespace

void kron_diag(const at::Tensor& A_in, const at::Tensor& r_in, const at::Tensor& l_in, at::Tensor& out) {
  check_diag_args(A_in, r_in, l_in, out);
  const c10::cuda::CUDAGuard guard(A_in.device());
  const auto A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const int64_t m = A.size(0), n = A.size(1);
  if (m * n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "fls_kron_diag_cuda", [&] {
    kron_diag_kernel<scalar_t><<<grid_for(m * n), kThreads, 0, stream()>>>(
        A.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), l.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), m, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void obs_scores(const at::Tensor& W_in, const at::Tensor& A_in, const at::Tensor& r_in, const at::Tensor& l_in,
                const at::Tensor& mask_in, at::Tensor& out) {
  check_obs_args(W_in, A_in, r_in, l_in, mask_in, out);
  const c10::cuda::CUDAGuard guard(W_in.device());
  const auto W = W_in.contiguous(), A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t m = W.size(0), n = W.size(1);
  if (m * n == 0) return;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "fls_obs_scores_cuda", [&] {
    obs_scores_kernel<scalar_t><<<grid_for(m * n), kThreads, 0, stream()>>>(
        W.const_data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
        l.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), out.mutable_data_ptr<scalar_t>(), m, n,
        std::numeric_limits<scalar_t>::infinity());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace fls::cuda
