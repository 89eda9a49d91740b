// Argument validation shared by every native kernel.
#include "ops.h"

#include <c10/util/Exception.h>

#include <utility>

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

namespace {

void check_block(const at::Tensor& A, const char* a_name, const at::Tensor& r, const at::Tensor& l,
                 const at::Tensor& out) {
  const auto m = A.size(0), n = A.size(1);
  check_vector(r, "r", m);
  check_vector(l, "l", n);
  check_matrix(out, "out", m, n);
  for (auto [t, name] : {std::pair{&r, "r"}, std::pair{&l, "l"}, std::pair{&out, "out"}}) {
    check_dtype(*t, name, A.scalar_type());
    check_device(*t, name, A, a_name);
  }
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
}

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

void check_diag_args(const at::Tensor& A, const at::Tensor& r, const at::Tensor& l, const at::Tensor& out) {
  TORCH_CHECK_VALUE(A.dim() == 2, "A: expected a matrix, got ", A.sizes());
  check_block(A, "A", r, l, out);
}

void check_obs_args(const at::Tensor& W, const at::Tensor& A, const at::Tensor& r, const at::Tensor& l,
                    const at::Tensor& mask, const at::Tensor& out) {
  TORCH_CHECK_VALUE(W.dim() == 2, "W: expected a matrix, got ", W.sizes());
  const int64_t m = W.size(0), n = W.size(1);
  check_matrix(A, "A", m, n);
  check_dtype(A, "A", W.scalar_type());
  check_device(A, "A", W, "W");
  check_block(A, "A", r, l, out);
  check_matrix(mask, "mask", m, n);
  check_dtype(mask, "mask", at::kBool);
  check_device(mask, "mask", W, "W");
}

void check_qv_args(const at::Tensor& V, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                   const std::string& precision, const at::Tensor& out) {
  check_q_block(V, "V", A, G_R, G_L);
  check_precision(precision);
  check_matrix(out, "out", V.size(0), V.size(1));
  check_dtype(out, "out", V.scalar_type());
  check_device(out, "out", V, "V");
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
}

void check_surgeon_args(const at::Tensor& W, const at::Tensor& A, const at::Tensor& G_R, const at::Tensor& G_L,
                        const at::Tensor& r, const at::Tensor& l, const at::Tensor& prune, const at::Tensor& keep,
                        const std::string& precision) {
  check_q_block(W, "W", A, G_R, G_L);
  check_precision(precision);
  const int64_t m = W.size(0), n = W.size(1);
  check_vector(r, "r", m);
  check_vector(l, "l", n);
  check_matrix(prune, "prune", m, n);
  check_matrix(keep, "keep", m, n);
  for (auto [t, name] : {std::pair{&r, "r"}, std::pair{&l, "l"}}) {
    check_dtype(*t, name, W.scalar_type());
    check_device(*t, name, W, "W");
  }
  for (auto [t, name] : {std::pair{&prune, "prune"}, std::pair{&keep, "keep"}}) {
    check_dtype(*t, name, at::kBool);
    check_device(*t, name, W, "W");
  }
  TORCH_CHECK_VALUE(W.is_contiguous(), "W: must be contiguous to be updated in place");
}

void check_select_lists(at::TensorList scores, at::TensorList outs, c10::DeviceType device) {
  TORCH_CHECK_VALUE(!scores.empty(), "scores: expected a non-empty list of tensors");
  TORCH_CHECK_VALUE(outs.size() == scores.size(), "outs: expected ", scores.size(), " tensors (one per score), got ",
                    outs.size());
  const auto dtype = scores[0].scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble, "scores[0]: expected float32 or float64, got ",
                   dtype);
  for (size_t t = 0; t < scores.size(); ++t) {
    TORCH_CHECK_TYPE(scores[t].scalar_type() == dtype, "scores[", t, "]: dtype ", scores[t].scalar_type(),
                     " differs from ", dtype, " of scores[0]");
    TORCH_CHECK_VALUE(scores[t].device().type() == device, "scores[", t, "]: expected a ", device,
                      " tensor, got one on ", scores[t].device());
    TORCH_CHECK_VALUE(scores[t].device() == scores[0].device(), "scores[", t, "]: on ", scores[t].device(),
                      " but scores[0] is on ", scores[0].device());
    TORCH_CHECK_TYPE(outs[t].scalar_type() == at::kBool, "outs[", t, "]: expected dtype bool, got ",
                     outs[t].scalar_type());
    TORCH_CHECK_VALUE(outs[t].sizes() == scores[t].sizes(), "outs[", t, "]: expected shape ", scores[t].sizes(),
                      ", got ", outs[t].sizes());
    TORCH_CHECK_VALUE(outs[t].device() == scores[t].device(), "outs[", t, "]: on ", outs[t].device(), " but scores[",
                      t, "] is on ", scores[t].device());
    TORCH_CHECK_VALUE(outs[t].is_contiguous(), "outs[", t, "]: must be contiguous");
  }
}

void check_select_nm(const at::Tensor& scores, int64_t n, int64_t m, const at::Tensor& out, c10::DeviceType device) {
  TORCH_CHECK_VALUE(scores.dim() == 2, "scores: expected a matrix [rows, cols], got ", scores.sizes());
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kDouble,
                   "scores: expected float32 or float64, got ", scores.scalar_type());
  TORCH_CHECK_VALUE(scores.device().type() == device, "scores: expected a ", device, " tensor, got one on ",
                    scores.device());
  TORCH_CHECK_VALUE(m >= 1 && n >= 0 && n <= m, "n, m: need 0 ≤ n ≤ m and m ≥ 1, got n=", n, ", m=", m);
  TORCH_CHECK_VALUE(scores.size(1) % m == 0, "scores: ", scores.size(1), " columns are not divisible into groups of m=",
                    m);
  check_matrix(out, "out", scores.size(0), scores.size(1));
  check_dtype(out, "out", at::kBool);
  check_device(out, "out", scores, "scores");
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
}

}  // namespace fls
