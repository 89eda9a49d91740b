// C++ unit test of the CPU selection kernels against a brute-force stable sort (no Python, no gtest).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "../../csrc/ops.h"

namespace {

int failures = 0;
const double inf = std::numeric_limits<double>::infinity();

void fail(const std::string& what) {
  std::fprintf(stderr, "FAIL %s\n", what.c_str());
  ++failures;
}

// The k smallest of the concatenation by a stable sort over (value, position); -0.0 == +0.0 as for `<`.
std::vector<at::Tensor> brute_force(const std::vector<at::Tensor>& scores, int64_t k) {
  std::vector<double> flat;
  for (const auto& s : scores) {
    const auto d = s.to(at::kDouble).contiguous();
    flat.insert(flat.end(), d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  }
  std::vector<int64_t> order(flat.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return flat[a] < flat[b]; });
  std::vector<bool> chosen(flat.size(), false);
  for (int64_t i = 0; i < k; ++i) chosen[size_t(order[size_t(i)])] = true;
  std::vector<at::Tensor> masks;
  size_t at = 0;
  for (const auto& s : scores) {
    auto m = at::zeros(s.sizes(), at::kBool);
    bool* p = m.data_ptr<bool>();
    for (int64_t i = 0; i < s.numel(); ++i) p[i] = chosen[at++];
    masks.push_back(m);
  }
  return masks;
}

std::vector<at::Tensor> poisoned_like(const std::vector<at::Tensor>& scores) {
  std::vector<at::Tensor> outs;
  for (const auto& s : scores) outs.push_back(at::ones(s.sizes(), at::kBool));
  return outs;
}

void expect_select(const std::vector<at::Tensor>& scores, int64_t k, const std::string& what) {
  auto outs = poisoned_like(scores);
  fls::cpu::select_smallest(scores, k, outs);
  const auto want = brute_force(scores, k);
  int64_t chosen = 0;
  for (size_t t = 0; t < scores.size(); ++t) {
    chosen += outs[t].sum().item<int64_t>();
    if (!at::equal(outs[t], want[t])) {
      fail(what + ": mask " + std::to_string(t) + " differs (k=" + std::to_string(k) + ")");
      return;
    }
  }
  if (chosen != k) fail(what + ": " + std::to_string(chosen) + " chosen, not k=" + std::to_string(k));
}

// Runs fn, which must throw c10::ValueError whose message contains `needle`.
template <typename Fn>
void expect_value_error(Fn fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const c10::ValueError& e) {
    if (std::string(e.what()).find(needle) == std::string::npos) fail(what + ": message lacks '" + needle + "'");
    return;
  } catch (const std::exception& e) {
    fail(what + ": wrong exception type: " + e.what());
    return;
  }
  fail(what + ": no error");
}

int64_t selectable(const std::vector<at::Tensor>& scores) {
  int64_t n = 0;
  for (const auto& s : scores) n += (s < inf).sum().item<int64_t>();
  return n;
}

void test_select_smallest() {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const std::string name = dtype == at::kFloat ? "float32" : "float64";
    const auto opts = at::TensorOptions().dtype(dtype);
    // Many ties (small integers), ±inf, -0.0 next to +0.0, empty and one-element tensors.
    std::vector<at::Tensor> scores = {
        at::randint(-3, 4, {13, 7}, opts), at::empty({0}, opts),         at::randint(-3, 4, {1}, opts),
        at::randint(-3, 4, {3, 5, 11}, opts), at::empty({2, 0, 3}, opts), at::randint(-3, 4, {129}, opts),
    };
    scores[0].index_put_({0, 0}, inf);
    scores[0].index_put_({1, 1}, inf);
    scores[3].index_put_({0, 0, 0}, -inf);
    scores[5].narrow(0, 0, 20).fill_(-0.0);
    scores[5].narrow(0, 20, 20).fill_(0.0);
    const int64_t finite = selectable(scores);
    for (int64_t k : {int64_t(0), int64_t(1), int64_t(7), finite / 2, finite - 1, finite}) {
      expect_select(scores, k, name + " ties/inf/-0");
    }
    // All equal: the first k in (tensor, flat index) order.
    expect_select({at::full({50}, 2.0, opts), at::full({7, 3}, 2.0, opts)}, 60, name + " all equal");
    // Larger than one chunk (2^16), so the passes run in parallel and ties cross chunk boundaries.
    std::vector<at::Tensor> big = {at::randint(0, 100, {150001}, opts), at::rand({70000}, opts),
                                   at::randint(0, 100, {3}, opts)};
    for (int64_t k : {int64_t(1), int64_t(1234), int64_t(75000), int64_t(150000), int64_t(220004)}) {
      expect_select(big, k, name + " large with ties");
    }
    // Continuous values spread over many binades, so the compacted-buffer path is taken.
    std::vector<at::Tensor> spread = {at::randn({200000}, opts).exp_(), at::randn({5000}, opts)};
    for (int64_t k : {int64_t(3), int64_t(100000), int64_t(205000)}) {
      expect_select(spread, k, name + " spread");
    }
    // One value holds most scores, so its digits are counted over the full input (no compaction).
    std::vector<at::Tensor> heavy = {at::rand({100000}, opts), at::full({150000}, 1.5, opts)};
    for (int64_t k : {int64_t(99999), int64_t(100000), int64_t(170001), int64_t(250000)}) {
      expect_select(heavy, k, name + " heavy tie");
    }
    // Only ±inf and zeros.
    expect_select({at::tensor({inf, -inf, 0.0, -0.0, inf}, opts)}, 3, name + " only inf and zeros");

    expect_value_error(
        [&] {
          auto bad = std::vector<at::Tensor>{at::zeros({4}, opts), at::zeros({5}, opts)};
          bad[1].index_put_({2}, std::numeric_limits<double>::quiet_NaN());
          auto outs = poisoned_like(bad);
          fls::cpu::select_smallest(bad, 0, outs);
        },
        "scores[1]: contains NaN", name + " NaN");
    expect_value_error(
        [&] {
          auto outs = poisoned_like(scores);
          fls::cpu::select_smallest(scores, finite + 1, outs);
        },
        "k: ", name + " k too large");
  }
  expect_value_error(
      [] {
        std::vector<at::Tensor> scores = {at::zeros({3})};
        std::vector<at::Tensor> outs = {at::ones({4}, at::kBool)};
        fls::cpu::select_smallest(scores, 1, outs);
      },
      "outs[0]: expected shape", "outs shape");
}

void test_select_nm() {
  for (const auto dtype : {at::kFloat, at::kDouble}) {
    const auto opts = at::TensorOptions().dtype(dtype);
    const std::vector<std::tuple<int64_t, int64_t, int64_t>> cases = {{7, 2, 4}, {5, 3, 8},   {3, 0, 4},
                                                                        {3, 4, 4}, {4, 17, 64}, {1, 1, 1}};
    for (const auto& [rows, n, m] : cases) {
      auto scores = at::randint(-2, 3, {rows, 3 * m}, opts);
      scores.view({-1}).index_put_({0}, -0.0);
      scores.view({-1}).index_put_({1}, inf);
      auto out = at::ones(scores.sizes(), at::kBool);
      fls::cpu::select_nm(scores, n, m, out);
      // Brute force per group: stable sort of the group's values.
      const auto d = scores.to(at::kDouble).contiguous();
      const double* x = d.data_ptr<double>();
      const bool* o = out.data_ptr<bool>();
      for (int64_t g = 0; g < d.numel() / m; ++g) {
        std::vector<int64_t> order(static_cast<size_t>(m));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[g * m + a] < x[g * m + b]; });
        std::vector<bool> want(size_t(m), false);
        for (int64_t j = 0; j < n; ++j) want[size_t(order[size_t(j)])] = true;
        for (int64_t j = 0; j < m; ++j) {
          if (o[g * m + j] != want[size_t(j)]) {
            fail("select_nm " + std::to_string(n) + ":" + std::to_string(m) + " group " + std::to_string(g));
            return;
          }
        }
      }
    }
  }
  expect_value_error(
      [] {
        auto out = at::empty({2, 6}, at::kBool);
        fls::cpu::select_nm(at::zeros({2, 6}), 2, 4, out);
      },
      "scores: 6 columns", "select_nm divisibility");
  expect_value_error(
      [] {
        auto out = at::empty({2, 8}, at::kBool);
        fls::cpu::select_nm(at::zeros({2, 8}), 5, 4, out);
      },
      "n, m:", "select_nm n > m");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_select_smallest();
  test_select_nm();
  std::printf("%s\n", failures ? "FAILED" : "OK");
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
