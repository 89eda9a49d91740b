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

// Every op of FLS_NATIVE_OPS (ops.h) declared, then given the kernels of namespace fls::<ns> (cpu or cuda) for
// the dispatch key of the enclosing TORCH_LIBRARY_IMPL.
#define FLS_DEF(stem, schema, params) m.def("_" #stem schema);
#define FLS_IMPL(stem, schema, params) m.impl("_" #stem, &Native<&fls::FLS_NS::stem>::call);

TORCH_LIBRARY_FRAGMENT(fls, m) { FLS_NATIVE_OPS(FLS_DEF) }

#define FLS_NS cpu
TORCH_LIBRARY_IMPL(fls, CPU, m) { FLS_NATIVE_OPS(FLS_IMPL) }
#undef FLS_NS

#ifdef FLS_WITH_CUDA
#define FLS_NS cuda
TORCH_LIBRARY_IMPL(fls, CUDA, m) { FLS_NATIVE_OPS(FLS_IMPL) }
#undef FLS_NS
#endif

#ifdef FLS_PYTHON_MODULE
#include <Python.h>

// Importing fls_kernels._C loads this library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fls_kernels native ops", -1, nullptr};
  return PyModule_Create(&module);
}
#endif
