// Every TORCH_LIBRARY declaration of the extension: internal ops torch.ops.fls._<op>_{cpu,cuda}.
// The public ops fls::<op> are declared in Python (fls_kernels/ops.py) in the same namespace, so this file
// adds a fragment. Outputs are allocated by the Python launchers.
#include <torch/library.h>

#include "ops.h"

namespace {

void kron_diag_cpu(const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, at::Tensor out) {
  fls::cpu::kron_diag(A, r, l, out);
}

void obs_scores_cpu(const at::Tensor& W, const at::Tensor& A, const at::Tensor& r, const at::Tensor& l,
                    const at::Tensor& mask, at::Tensor out) {
  fls::cpu::obs_scores(W, A, r, l, mask, out);
}

void kron_qv_cpu(const at::Tensor& V, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                 c10::string_view precision, at::Tensor out) {
  fls::cpu::kron_qv(V, A, G_R, G_L, std::string(precision), out);
}

void surgeon_update_cpu(at::Tensor W, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                        const at::Tensor& r, const at::Tensor& l, const at::Tensor& prune, const at::Tensor& keep,
                        c10::string_view precision) {
  fls::cpu::surgeon_update(W, A, G_R, G_L, r, l, prune, keep, std::string(precision));
}

void select_smallest_cpu(at::TensorList scores, int64_t k, at::TensorList outs) {
  fls::cpu::select_smallest(scores, k, outs);
}

void select_nm_cpu(const at::Tensor& scores, int64_t n, int64_t m, at::Tensor out) {
  fls::cpu::select_nm(scores, n, m, out);
}

#ifdef FLS_WITH_CUDA
void kron_diag_cuda(const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, at::Tensor out) {
  fls::cuda::kron_diag(A, r, l, out);
}

void obs_scores_cuda(const at::Tensor& W, const at::Tensor& A, const at::Tensor& r, const at::Tensor& l,
                     const at::Tensor& mask, at::Tensor out) {
  fls::cuda::obs_scores(W, A, r, l, mask, out);
}

void kron_qv_cuda(const at::Tensor& V, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                  c10::string_view precision, at::Tensor out) {
  fls::cuda::kron_qv(V, A, G_R, G_L, std::string(precision), out);
}

void surgeon_update_cuda(at::Tensor W, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                         const at::Tensor& r, const at::Tensor& l, const at::Tensor& prune, const at::Tensor& keep,
                         c10::string_view precision) {
  fls::cuda::surgeon_update(W, A, G_R, G_L, r, l, prune, keep, std::string(precision));
}

void select_smallest_cuda(at::TensorList scores, int64_t k, at::TensorList outs) {
  fls::cuda::select_smallest(scores, k, outs);
}

void select_nm_cuda(const at::Tensor& scores, int64_t n, int64_t m, at::Tensor out) {
  fls::cuda::select_nm(scores, n, m, out);
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(fls, m) {
  m.def("_kron_diag_cpu(Tensor A, Tensor r, Tensor l, Tensor(a!) out) -> ()");
  m.def("_obs_scores_cpu(Tensor W, Tensor A, Tensor r, Tensor l, Tensor mask, Tensor(a!) out) -> ()");
  m.def("_kron_qv_cpu(Tensor V, Tensor A, Tensor G_R, Tensor G_L, str precision, Tensor(a!) out) -> ()");
  m.def(
      "_surgeon_update_cpu(Tensor(a!) W, Tensor A, Tensor G_R, Tensor G_L, Tensor r, Tensor l, Tensor prune, "
      "Tensor keep, str precision) -> ()");
  m.def("_select_smallest_cpu(Tensor[] scores, int k, Tensor(a!)[] outs) -> ()");
  m.def("_select_nm_cpu(Tensor scores, int n, int m, Tensor(a!) out) -> ()");
#ifdef FLS_WITH_CUDA
  m.def("_kron_diag_cuda(Tensor A, Tensor r, Tensor l, Tensor(a!) out) -> ()");
  m.def("_obs_scores_cuda(Tensor W, Tensor A, Tensor r, Tensor l, Tensor mask, Tensor(a!) out) -> ()");
  m.def("_kron_qv_cuda(Tensor V, Tensor A, Tensor G_R, Tensor G_L, str precision, Tensor(a!) out) -> ()");
  m.def(
      "_surgeon_update_cuda(Tensor(a!) W, Tensor A, Tensor G_R, Tensor G_L, Tensor r, Tensor l, Tensor prune, "
      "Tensor keep, str precision) -> ()");
  m.def("_select_smallest_cuda(Tensor[] scores, int k, Tensor(a!)[] outs) -> ()");
  m.def("_select_nm_cuda(Tensor scores, int n, int m, Tensor(a!) out) -> ()");
#endif
}

TORCH_LIBRARY_IMPL(fls, CPU, m) {
  m.impl("_kron_diag_cpu", &kron_diag_cpu);
  m.impl("_obs_scores_cpu", &obs_scores_cpu);
  m.impl("_kron_qv_cpu", &kron_qv_cpu);
  m.impl("_surgeon_update_cpu", &surgeon_update_cpu);
  m.impl("_select_smallest_cpu", &select_smallest_cpu);
  m.impl("_select_nm_cpu", &select_nm_cpu);
}

#ifdef FLS_WITH_CUDA
TORCH_LIBRARY_IMPL(fls, CUDA, m) {
  m.impl("_kron_diag_cuda", &kron_diag_cuda);
  m.impl("_obs_scores_cuda", &obs_scores_cuda);
  m.impl("_kron_qv_cuda", &kron_qv_cuda);
  m.impl("_surgeon_update_cuda", &surgeon_update_cuda);
  m.impl("_select_smallest_cuda", &select_smallest_cuda);
  m.impl("_select_nm_cuda", &select_nm_cuda);
}
#endif

#ifdef FLS_PYTHON_MODULE
#include <Python.h>

// Importing fls_kernels._C loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fls_kernels native ops", -1, nullptr};
  return PyModule_Create(&module);
}
#endif
