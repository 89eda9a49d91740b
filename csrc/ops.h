// Native kernels of the fls op contracts. Each writes into outputs allocated by the caller (so tests can
// poison them) or updates W in place. Registered in registration.cpp, from FLS_NATIVE_OPS, as the CPU and
// CUDA kernels of one internal op each, torch.ops.fls._<op>.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace fls {

// Argument checks that name the argument; they surface in Python as ValueError / TypeError.
void check_matrix(const at::Tensor& t, const char* name, int64_t rows, int64_t cols);
void check_vector(const at::Tensor& t, const char* name, int64_t size);
void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype);
void check_device(const at::Tensor& t, const char* name, const at::Tensor& first, const char* first_name);
void check_precision(const std::string& precision);
// Checks of every argument of one op (shared by its CPU and CUDA kernels).
void check_diag_args(const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, const at::Tensor& out);
void check_obs_args(const at::Tensor& W, const at::Tensor& A, const at::Tensor& r, const at::Tensor& l,
                    const at::Tensor& mask, const at::Tensor& out);
void check_qv_args(const at::Tensor& V, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                   const std::string& precision, const at::Tensor& out);
void check_surgeon_args(const at::Tensor& W, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                        const at::Tensor& r, const at::Tensor& l, const at::Tensor& prune, const at::Tensor& keep,
                        const std::string& precision);
// Checks of the selection ops' arguments; `device` is the device type the kernel runs on.
void check_select_lists(at::TensorList scores, at::TensorList outs, c10::DeviceType device);
void check_select_nm(const at::Tensor& scores, int64_t n, int64_t m, const at::Tensor& out, c10::DeviceType device);

// The native ops, each listed once: X(stem, schema of its internal op fls::_<stem>, parameters of its kernels).
// The kernels are declared from it below in namespace cpu (csrc/cpu, always built) and namespace cuda
// (csrc/cuda, built with FLS_WITH_CUDA), and registration.cpp defines and implements every op from it:
//   select_smallest: outs[t] = the scores of scores[t] among the k smallest of all of them (ties: lower
//                    (t, flat index) first);
//   select_nm:       out = the n smallest of every group of m consecutive entries of each row (ties: lower
//                    column first);
//   precision picks the GEMM mode of kron_qv and surgeon_update on CUDA: fp32 (IEEE), tf32, or bf16 operands
//   with fp32 accumulation (no effect on the CPU: fp32 BLAS).
#define FLS_NATIVE_OPS(X)                                                                                       \
  X(kron_diag, "(Tensor A, Tensor r, Tensor l, Tensor(a!) out) -> ()",                                         \
    (const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, at::Tensor& out))                          \
  X(obs_scores, "(Tensor W, Tensor A, Tensor r, Tensor l, Tensor mask, Tensor(a!) out) -> ()",                 \
    (const at::Tensor& W, const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, const at::Tensor& mask, \
     at::Tensor& out))                                                                                         \
  X(kron_qv, "(Tensor V, Tensor A, Tensor G_R, Tensor G_L, str precision, Tensor(a!) out) -> ()",              \
    (const at::Tensor& V, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,                   \
     const std::string& precision, at::Tensor& out))                                                           \
  X(surgeon_update,                                                                                            \
    "(Tensor(a!) W, Tensor A, Tensor G_R, Tensor G_L, Tensor r, Tensor l, Tensor prune, Tensor keep, "          \
    "str precision) -> ()",                                                                                    \
    (at::Tensor& W, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L, const at::Tensor& r,    \
     const at::Tensor& l, const at::Tensor& prune, const at::Tensor& keep, const std::string& precision))      \
  X(select_smallest, "(Tensor[] scores, int k, Tensor(a!)[] outs) -> ()",                                      \
    (at::TensorList scores, int64_t k, at::TensorList outs))                                                   \
  X(select_nm, "(Tensor scores, int n, int m, Tensor(a!) out) -> ()",                                          \
    (const at::Tensor& scores, int64_t n, int64_t m, at::Tensor& out))

#define FLS_KERNEL_PROTOTYPE(stem, schema, params) void stem params;

namespace cpu {
FLS_NATIVE_OPS(FLS_KERNEL_PROTOTYPE)
}  // namespace cpu

namespace cuda {
FLS_NATIVE_OPS(FLS_KERNEL_PROTOTYPE)
}  // namespace cuda

}  // namespace fls
