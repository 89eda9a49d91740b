// Every TORCH_LIBRARY declaration of the extension: one internal op torch.ops.fls._<op> per native op, with a
// CPU kernel and, when built with FLS_WITH_CUDA, a CUDA kernel; the dispatcher picks by the tensors' device.
// The public ops fls::<op> are declared in Python (fls_kernels/ops.py) in the same namespace, so this file
// adds a fragment. Outputs are allocated by the Python launchers (fls_kernels/backends/cuda.py).
#include <torch/library.h>

#include <string>
#include <type_traits>

#include "ops.h"

namespace {

// The dispatcher passes tensors it may write by value and strings as views; the kernels of ops.h take
// at::Tensor& and const std::string&. Native<&kernel>::call adapts one to the other, so the thin wrapper of
// every kernel, CPU or CUDA, is generated from its prototype.
template <class T>
struct Boxed {
  using type = T;
};
template <>
struct Boxed<at::Tensor&> {
  using type = at::Tensor;
};
template <>
struct Boxed<const std::string&> {
  using type = c10::string_view;
};

template <class T, class U>
decltype(auto) unboxed(U& arg) {
  if constexpr (std::is_same_v<T, const std::string&>) {
    return std::string(arg);
  } else {
    return static_cast<T>(arg);
  }
}

template <auto Kernel>
struct Native;

template <class... Args, void (*Kernel)(Args...)>
struct Native<Kernel> {
  static void call(typename Boxed<Args>::type... args) { Kernel(unboxed<Args>(args)...); }
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(fls, m) {
  m.def("_kron_diag(Tensor A, Tensor r, Tensor l, Tensor(a!) out) -> ()");
  m.def("_obs_scores(Tensor W, Tensor A, Tensor r, Tensor l, Tensor mask, Tensor(a!) out) -> ()");
  m.def("_kron_qv(Tensor V, Tensor A, Tensor G_R, Tensor G_L, str precision, Tensor(a!) out) -> ()");
  m.def(
      "_surgeon_update(Tensor(a!) W, Tensor A, Tensor G_R, Tensor G_L, Tensor r, Tensor l, Tensor prune, "
      "Tensor keep, str precision) -> ()");
  m.def("_select_smallest(Tensor[] scores, int k, Tensor(a!)[] outs) -> ()");
  m.def("_select_nm(Tensor scores, int n, int m, Tensor(a!) out) -> ()");
}

// The kernels of namespace fls::<ns> (cpu or cuda) for the dispatch key of the enclosing TORCH_LIBRARY_IMPL.
#define FLS_IMPL_KERNELS(ns)                                                \
  m.impl("_kron_diag", &Native<&fls::ns::kron_diag>::call);                 \
  m.impl("_obs_scores", &Native<&fls::ns::obs_scores>::call);               \
  m.impl("_kron_qv", &Native<&fls::ns::kron_qv>::call);                     \
  m.impl("_surgeon_update", &Native<&fls::ns::surgeon_update>::call);       \
  m.impl("_select_smallest", &Native<&fls::ns::select_smallest>::call);     \
  m.impl("_select_nm", &Native<&fls::ns::select_nm>::call);

TORCH_LIBRARY_IMPL(fls, CPU, m) { FLS_IMPL_KERNELS(cpu) }

#ifdef FLS_WITH_CUDA
TORCH_LIBRARY_IMPL(fls, CUDA, m) { FLS_IMPL_KERNELS(cuda) }
#endif

#ifdef FLS_PYTHON_MODULE
#include <Python.h>

// Importing fls_kernels._C loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fls_kernels native ops", -1, nullptr};
  return PyModule_Create(&module);
}
#endif
