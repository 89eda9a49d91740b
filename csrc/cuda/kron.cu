// CUDA kernels of the Q products: Q(V) = A ⊙ (G_R (A ⊙ V) G_L) and the in-place surgeon update
// W ← keep ⊙ (W − A ⊙ (G_R (A ⊙ Z) G_L)),  Z = prune ⊙ W ⊘ (A² ⊙ r lᵀ).
// A fused prologue kernel forms the GEMM operand A ⊙ V (or A ⊙ Z, where one factor of A cancels against diag Q)
// directly in the operand dtype; two cuBLAS GEMMs through ATen (at::mm) apply G_R and G_L; a fused epilogue
// kernel scales by A (and for the update subtracts and masks, in place).
//
// `precision` (float32 inputs; float64 is always IEEE):
//   fp32  IEEE single precision: the GEMMs run under at::NoTF32Guard (thread-local), whatever the global
//         setting is;
//   tf32  TF32 tensor cores: torch's float32 matmul precision is set to "high" around the two GEMMs and
//         restored afterwards. That setting is process-wide, so a matmul that another thread runs meanwhile
//         may use TF32 too;
//   bf16  operands rounded to bf16 (the prologue writes A ⊙ V / A ⊙ Z in bf16, G_R and G_L are cast), products
//         accumulated and returned in fp32 (at::mm with out_dtype=float32); the intermediate G_R (A ⊙ Z) is
//         rounded to bf16 again as the second GEMM's operand.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>

#include <string>

#include "../ops.h"
#include "launch.cuh"

namespace fls::cuda {
namespace {

// Sets torch's float32 matmul precision for a scope and restores the previous one.
class MatmulPrecisionGuard {
 public:
  explicit MatmulPrecisionGuard(const char* precision) : saved_(at::globalContext().float32MatmulPrecision()) {
    at::globalContext().setFloat32MatmulPrecision(precision);
  }
  ~MatmulPrecisionGuard() { at::globalContext().setFloat32MatmulPrecision(name(saved_)); }
  MatmulPrecisionGuard(const MatmulPrecisionGuard&) = delete;
  MatmulPrecisionGuard& operator=(const MatmulPrecisionGuard&) = delete;

 private:
  static const char* name(at::Float32MatmulPrecision p) {
    switch (p) {
      case at::Float32MatmulPrecision::HIGH:
        return "high";
      case at::Float32MatmulPrecision::MEDIUM:
        return "medium";
      default:
        return "highest";
    }
  }
  at::Float32MatmulPrecision saved_;
};

// G_R · X · G_L with X already in the operand dtype (float, double or bf16); the result is float or double.
at::Tensor two_sided_product(const at::Tensor& G_R, const at::Tensor& X, const at::Tensor& G_L,
                             const std::string& precision) {
  if (X.scalar_type() == at::kBFloat16) {
    const auto left = at::mm(G_R.to(at::kBFloat16), X, at::kFloat);
    return at::mm(left.to(at::kBFloat16), G_L.to(at::kBFloat16), at::kFloat);
  }
  if (precision == "tf32" && X.scalar_type() == at::kFloat) {
    const MatmulPrecisionGuard tf32("high");
    return at::mm(at::mm(G_R, X), G_L);
  }
  const at::NoTF32Guard ieee;
  return at::mm(at::mm(G_R, X), G_L);
}

// The GEMM operand dtype for inputs of `dtype` under `precision`.
at::ScalarType operand_dtype(at::ScalarType dtype, const std::string& precision) {
  return dtype == at::kFloat && precision == "bf16" ? at::kBFloat16 : dtype;
}

// U = A ⊙ V in the operand dtype.
template <typename T, typename Op>
__global__ void scale_kernel(const T* __restrict__ a, const T* __restrict__ v, Op* __restrict__ u, int64_t total) {
  FLS_GRID_STRIDE(q, total) { u[q] = Op(a[q] * v[q]); }
}

// out = A ⊙ P.
template <typename T>
__global__ void scale_out_kernel(const T* __restrict__ a, const T* __restrict__ p, T* __restrict__ out,
                                 int64_t total) {
  FLS_GRID_STRIDE(q, total) { out[q] = a[q] * p[q]; }
}

// A ⊙ Z = prune ⊙ W ⊘ (A ⊙ r lᵀ) in the operand dtype.
template <typename T, typename Op>
__global__ void surgeon_prologue_kernel(const T* __restrict__ w, const T* __restrict__ a, const T* __restrict__ r,
                                        const T* __restrict__ l, const bool* __restrict__ prune, Op* __restrict__ az,
                                        int64_t m, int64_t n) {
  FLS_GRID_STRIDE(q, m * n) {
    const int64_t i = q / n, j = q - i * n;
    az[q] = prune[q] ? Op(w[q] / (a[q] * (r[i] * l[j]))) : Op(0);
  }
}

// W ← keep ⊙ (W − A ⊙ T), in place.
template <typename T>
__global__ void surgeon_epilogue_kernel(T* __restrict__ w, const T* __restrict__ a, const T* __restrict__ t,
                                        const bool* __restrict__ keep, int64_t total) {
  FLS_GRID_STRIDE(q, total) { w[q] = keep[q] ? w[q] - a[q] * t[q] : T(0); }
}

}  // namespace

void kron_qv(const at::Tensor& V_in, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
             const std::string& precision, at::Tensor& out) {
  check_qv_args(V_in, A_in, G_R, G_L, precision, out);
  const c10::cuda::CUDAGuard guard(V_in.device());
  const auto V = V_in.contiguous(), A = A_in.contiguous();
  const int64_t total = V.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "fls_kron_qv_cuda", [&] {
    auto U = at::empty(V.sizes(), V.options().dtype(operand_dtype(V.scalar_type(), precision)));
    if (U.scalar_type() == at::kBFloat16) {
      scale_kernel<scalar_t, c10::BFloat16><<<grid_for(total), kThreads, 0, stream()>>>(
          A.const_data_ptr<scalar_t>(), V.const_data_ptr<scalar_t>(), U.mutable_data_ptr<c10::BFloat16>(), total);
    } else {
      scale_kernel<scalar_t, scalar_t><<<grid_for(total), kThreads, 0, stream()>>>(
          A.const_data_ptr<scalar_t>(), V.const_data_ptr<scalar_t>(), U.mutable_data_ptr<scalar_t>(), total);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto P = two_sided_product(G_R, U, G_L, precision).contiguous();
    scale_out_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream()>>>(
        A.const_data_ptr<scalar_t>(), P.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void surgeon_update(at::Tensor& W, const at::Tensor& A_in, const at::Tensor& G_R, const at::Tensor& G_L,
                    const at::Tensor& r_in, const at::Tensor& l_in, const at::Tensor& prune_in,
                    const at::Tensor& keep_in, const std::string& precision) {
  check_surgeon_args(W, A_in, G_R, G_L, r_in, l_in, prune_in, keep_in, precision);
  const c10::cuda::CUDAGuard guard(W.device());
  const auto A = A_in.contiguous(), r = r_in.contiguous(), l = l_in.contiguous();
  const auto prune = prune_in.contiguous(), keep = keep_in.contiguous();
  const int64_t m = W.size(0), n = W.size(1), total = m * n;
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "fls_surgeon_update_cuda", [&] {
    auto AZ = at::empty(W.sizes(), W.options().dtype(operand_dtype(W.scalar_type(), precision)));
    const scalar_t *w = W.const_data_ptr<scalar_t>(), *a = A.const_data_ptr<scalar_t>(),
                   *rp = r.const_data_ptr<scalar_t>(), *lp = l.const_data_ptr<scalar_t>();
    if (AZ.scalar_type() == at::kBFloat16) {
      surgeon_prologue_kernel<scalar_t, c10::BFloat16><<<grid_for(total), kThreads, 0, stream()>>>(
          w, a, rp, lp, prune.const_data_ptr<bool>(), AZ.mutable_data_ptr<c10::BFloat16>(), m, n);
    } else {
      surgeon_prologue_kernel<scalar_t, scalar_t><<<grid_for(total), kThreads, 0, stream()>>>(
          w, a, rp, lp, prune.const_data_ptr<bool>(), AZ.mutable_data_ptr<scalar_t>(), m, n);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto T = two_sided_product(G_R, AZ, G_L, precision).contiguous();
    surgeon_epilogue_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream()>>>(
        W.mutable_data_ptr<scalar_t>(), a, T.const_data_ptr<scalar_t>(), keep.const_data_ptr<bool>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace fls::cuda
