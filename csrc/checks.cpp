// Argument validation shared by every native kernel.
#include "ops.h"

#include <c10/util/Exception.h>

namespace fls {

void check_matrix(const at::Tensor& t, const char* name, int64_t rows, int64_t cols) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, name, ": expected shape [", rows,
                    ", ", cols, "], got ", t.sizes());
}

void check_vector(const at::Tensor& t, const char* name, int64_t size) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == size, name, ": expected shape [", size, "], got ", t.sizes());
}

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype, ", got ", t.scalar_type());
}

void check_device(const at::Tensor& t, const char* name, const at::Tensor& first, const char* first_name) {
  TORCH_CHECK_VALUE(t.device() == first.device(), name, ": on ", t.device(), " but ", first_name, " is on ",
                    first.device());
}

void check_precision(const std::string& precision) {
  TORCH_CHECK_VALUE(precision == "fp32" || precision == "tf32" || precision == "bf16",
                    "precision: expected fp32, tf32 or bf16, got ", precision);
}

}  // namespace fls
