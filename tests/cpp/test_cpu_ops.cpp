// C++ unit test of the CPU kernels against ATen expressions of the same formulas (no Python, no gtest).
#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <limits>

#include "../../csrc/ops.h"

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const char* what) {
  const auto finite = at::isfinite(want);
  const bool same_inf = at::equal(at::isinf(got), at::isinf(want));
  const double err = (got.masked_select(finite) - want.masked_select(finite)).abs().max().item<double>();
  const double scale = want.masked_select(finite).abs().max().item<double>();
  if (!same_inf || err > tol * scale || at::isnan(got).any().item<bool>()) {
    std::fprintf(stderr, "FAIL %s: rel err %.3e\n", what, err / scale);
    ++failures;
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t m = 13, n = 7;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const auto W = at::randn({m, n}, opts), A = at::rand({m, n}, opts) + 0.5;
  const auto R = at::randn({m, m}, opts), L = at::randn({n, n}, opts);
  const auto G_R = R.t().mm(R), G_L = L.mm(L.t());
  const auto r = G_R.diagonal().contiguous(), l = G_L.diagonal().contiguous();
  const auto alive = at::rand({m, n}) > 0.3;
  const auto prune = alive & (at::rand({m, n}) > 0.5);
  const auto keep = alive & ~prune;
  const auto diag = A * A * at::outer(r, l);

  auto out = at::full({m, n}, std::numeric_limits<double>::quiet_NaN(), opts);
  fls::cpu::kron_diag(A, r, l, out);
  expect_close(out, diag, 1e-12, "kron_diag");

  fls::cpu::obs_scores(W, A, r, l, alive, out);
  expect_close(out, at::where(alive, W * W / (2 * diag), std::numeric_limits<double>::infinity()), 1e-12,
               "obs_scores");

  fls::cpu::kron_qv(W, A, G_R, G_L, "fp32", out);
  expect_close(out, A * G_R.mm(A * W).mm(G_L), 1e-12, "kron_qv");

  auto W2 = W.clone();
  fls::cpu::surgeon_update(W2, A, G_R, G_L, r, l, prune, keep, "fp32");
  const auto Z = at::where(prune, W / diag, 0.0);
  expect_close(W2, at::where(keep, W - A * G_R.mm(A * Z).mm(G_L), 0.0), 1e-12, "surgeon_update");

  bool named = false;
  try {
    fls::cpu::kron_diag(A, r.narrow(0, 0, 3), l, out);
  } catch (const c10::ValueError& e) {
    named = std::string(e.what()).find("r: expected shape") != std::string::npos;
  }
  if (!named) {
    std::fprintf(stderr, "FAIL: shape error does not name the argument\n");
    ++failures;
  }
  std::printf("%s\n", failures ? "FAILED" : "OK");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
