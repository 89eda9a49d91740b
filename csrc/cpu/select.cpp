// CPU kernels of the selection ops: exact global k-smallest over a list of tensors, and N:M groups.
//
// select_smallest is a radix select on order-preserving unsigned keys (select_keys.h: float32 → uint32,
// float64 → uint64) read straight from the input tensors; nothing is concatenated:
//   1. a histogram of the top 16 key bits of every score; the same pass counts NaN;
//   2. the bin holding the k-th smallest fixes 16 more bits of the threshold key. While that bin holds more
//      than a quarter of the scores, the next digit is counted over the full input, filtered by the prefix;
//      otherwise the prefix's keys are compacted once into per-thread buffers and the remaining digits only
//      read (and further compact) those buffers;
//   3. with the threshold key T and `take`, the number of keys equal to T that are selected, one parallel
//      marking pass writes key < T, or key ≤ T when every tie is taken. Otherwise a counting pass gives each
//      chunk its number of ties and an exclusive scan its first tie rank, so ties are taken in (tensor, flat
//      index) order and the marking pass stays parallel.
// Every pass is an at::parallel_for over chunks of at most 2^16 scores of one tensor, with per-thread
// histograms (two interleaved uint32 tables, so runs of one digit do not serialise on one counter).
// Up to 2^15 scores in all, one thread copies the keys and uses std::nth_element instead.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "../ops.h"
#include "../select_keys.h"

namespace fls::cpu {
namespace {

constexpr int kDigitBits = 16;
constexpr int64_t kBins = int64_t(1) << kDigitBits;
constexpr int64_t kChunk = int64_t(1) << 16;  // scores per work item of the full passes
constexpr int64_t kSmall = int64_t(1) << 15;  // inputs up to this size take the single-threaded path

// A contiguous piece of one input tensor: the unit of parallel work and of tie counting.
struct Chunk {
  int64_t tensor, begin, end;
};

// The key bits decided so far and the digit below them that the next pass counts.
template <typename U>
struct Digit {
  U prefix_mask;
  U prefix;
  int shift;  // digit = (key >> shift) & (kBins - 1)
};

// A growable array of keys that is not zero-filled when it grows (compaction writes past its size).
template <typename U>
class KeyBuffer {
 public:
  int64_t size() const { return size_; }
  U* data() { return data_.get(); }
  // Room for `extra` more keys after the current ones.
  U* reserve_more(int64_t extra) {
    if (size_ + extra > capacity_) {
      const int64_t capacity = std::max(size_ + extra, 2 * capacity_);
      std::unique_ptr<U[]> grown(new U[size_t(capacity)]);
      if (size_ > 0) std::memcpy(grown.get(), data_.get(), size_t(size_) * sizeof(U));
      data_ = std::move(grown);
      capacity_ = capacity;
    }
    return data_.get() + size_;
  }
  void resize(int64_t size) { size_ = size; }

 private:
  std::unique_ptr<U[]> data_;
  int64_t size_ = 0, capacity_ = 0;
};

// Per-thread digit histograms: two interleaved uint32 tables per thread (flushed into int64 totals at the
// end of each thread's share of a pass, or before they could overflow), merged over threads after the pass.
class Histograms {
 public:
  explicit Histograms(int threads)
      : threads_(threads), counts_(size_t(threads) * 2 * kBins, 0), totals_(size_t(threads) * kBins, 0) {}

  // The two tables of thread `tid`: counts[digit] and counts[kBins + digit].
  uint32_t* tables(int tid) { return counts_.data() + size_t(tid) * 2 * kBins; }

  void flush(int tid) {
    uint32_t* c = tables(tid);
    int64_t* total = totals_.data() + size_t(tid) * kBins;
    for (int64_t b = 0; b < kBins; ++b) total[b] += int64_t(c[b]) + int64_t(c[kBins + b]);
    std::fill(c, c + 2 * kBins, 0u);
  }

  std::vector<int64_t> merge_and_clear() {
    std::vector<int64_t> merged(size_t(kBins), 0);
    for (int t = 0; t < threads_; ++t) {
      const int64_t* total = totals_.data() + size_t(t) * kBins;
      for (int64_t b = 0; b < kBins; ++b) merged[size_t(b)] += total[b];
    }
    std::fill(totals_.begin(), totals_.end(), 0);
    return merged;
  }

 private:
  int threads_;
  std::vector<uint32_t> counts_;
  std::vector<int64_t> totals_;
};

template <typename T>
class Selector {
  using K = Keys<T>;
  using U = typename K::U;

 public:
  Selector(at::TensorList scores, at::TensorList outs) : threads_(at::get_num_threads()) {
    for (size_t t = 0; t < scores.size(); ++t) {
      data_.push_back(scores[t].contiguous());
      ptr_.push_back(data_.back().template const_data_ptr<T>());
      out_.push_back(outs[t].template mutable_data_ptr<bool>());
      const int64_t n = scores[t].numel();
      for (int64_t b = 0; b < n; b += kChunk) chunks_.push_back({int64_t(t), b, std::min(n, b + kChunk)});
      total_ += n;
    }
  }

  void run(int64_t k) {
    if (total_ <= kSmall) {
      run_small(k);
      return;
    }
    hist_ = std::make_unique<Histograms>(threads_);
    Digit<U> d{U(0), U(0), K::kBits - kDigitBits};
    auto hist = count_top_digit(d);
    const auto inf_bin = int64_t(K::key(std::numeric_limits<T>::infinity()) >> d.shift);
    int64_t selectable = total_;
    for (int64_t b = inf_bin; b < kBins; ++b) selectable -= hist[size_t(b)];  // +inf (NaN was ruled out)
    TORCH_CHECK_VALUE(k <= selectable, "k: ", k, " exceeds the ", selectable, " scores below +inf");
    if (k == 0) {
      mark([](T) { return false; });
      return;
    }

    // Walk down the digits; `rank` is the 0-based rank of the k-th smallest among the keys with the prefix,
    // `less` counts the keys below the prefix, `group` those with it.
    int64_t rank = k - 1, less = 0, group = 0;
    bool buffered = false;
    std::vector<KeyBuffer<U>> buffers(static_cast<size_t>(threads_));
    while (true) {
      int64_t bin = 0;
      while (rank >= hist[size_t(bin)]) {
        rank -= hist[size_t(bin)];
        less += hist[size_t(bin)];
        ++bin;
      }
      group = hist[size_t(bin)];
      d.prefix |= U(bin) << d.shift;
      d.prefix_mask |= U(kBins - 1) << d.shift;
      if (d.shift == 0) break;
      d.shift -= kDigitBits;
      if (!buffered && group <= total_ / 4) {
        compact(d, buffers, group);
        buffered = true;
      }
      hist = buffered ? count_buffers(d, buffers) : count_filtered(d);
    }
    finish(d.prefix, k - less, group);
  }

 private:
  // Inputs this small skip the histograms (whose tables alone are ~1 MiB per thread): one thread copies the
  // keys and finds the k-th smallest with std::nth_element.
  void run_small(int64_t k) {
    const U highest = K::key(std::numeric_limits<T>::infinity());
    std::vector<U> keys;
    keys.reserve(size_t(total_));
    bool nan = false;
    for (int64_t c = 0; c < int64_t(chunks_.size()); ++c) {
      const T* x = chunk_scores(c);
      for (int64_t i = 0; i < chunk_size(c); ++i) {
        nan |= x[i] != x[i];
        keys.push_back(K::key(x[i]));
      }
    }
    if (nan) raise_nan();
    const auto selectable = int64_t(std::count_if(keys.begin(), keys.end(), [&](U key) { return key < highest; }));
    TORCH_CHECK_VALUE(k <= selectable, "k: ", k, " exceeds the ", selectable, " scores below +inf");
    if (k == 0) {
      mark([](T) { return false; });
      return;
    }
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end());
    const U threshold = keys[size_t(k - 1)];
    const auto less =
        int64_t(std::count_if(keys.begin(), keys.begin() + (k - 1), [&](U key) { return key < threshold; }));
    const auto group = int64_t(std::count(keys.begin(), keys.end(), threshold));
    finish(threshold, k - less, group);
  }

  // Marks the keys below `threshold` and the first `take` of the `group` keys equal to it.
  void finish(U threshold, int64_t take, int64_t group) {
    if (take == group) {
      mark([threshold](T x) { return K::key(x) <= threshold; });
    } else {
      mark_with_ties(threshold, take);
    }
  }

  const T* chunk_scores(int64_t c) const { return ptr_[size_t(chunks_[size_t(c)].tensor)] + chunks_[size_t(c)].begin; }
  bool* chunk_out(int64_t c) const { return out_[size_t(chunks_[size_t(c)].tensor)] + chunks_[size_t(c)].begin; }
  int64_t chunk_size(int64_t c) const { return chunks_[size_t(c)].end - chunks_[size_t(c)].begin; }

  // fn(first chunk, end chunk, thread id) over all chunks in parallel (inline when the input is small).
  template <typename Fn>
  void over_chunks(const Fn& fn) {
    const auto n = int64_t(chunks_.size());
    at::parallel_for(0, n, total_ < 2 * kChunk ? std::max<int64_t>(n, 1) : 1,
                     [&](int64_t begin, int64_t end) { fn(begin, end, at::get_thread_num()); });
  }

  // count(x, n, tables) over every chunk with the thread's tables, flushing them before uint32 could overflow.
  template <typename Count>
  std::vector<int64_t> histogram(const Count& count) {
    over_chunks([&](int64_t begin, int64_t end, int tid) {
      uint32_t* tables = hist_->tables(tid);
      int64_t pending = 0;
      for (int64_t c = begin; c < end; ++c) {
        if (pending > (int64_t(1) << 31)) {
          hist_->flush(tid);
          pending = 0;
        }
        count(chunk_scores(c), chunk_size(c), tables, tid);
        pending += chunk_size(c);
      }
      hist_->flush(tid);
    });
    return hist_->merge_and_clear();
  }

  // The top digit of every key; NaN raises. Blocks of digits (and the NaN test) are computed first, in a
  // vectorisable loop, then counted.
  std::vector<int64_t> count_top_digit(const Digit<U>& d) {
    static_assert(kDigitBits == 16, "top digits are stored as uint16");
    constexpr int64_t kBlock = 2048;
    const int shift = d.shift;
    std::vector<int64_t> nans(size_t(threads_), 0);
    auto hist = histogram([&](const T* x, int64_t n, uint32_t* tables, int tid) {
      uint16_t digits[kBlock];
      int64_t nan = 0;
      for (int64_t start = 0; start < n; start += kBlock) {
        const int64_t m = std::min(kBlock, n - start);
        int block_nan = 0;
        for (int64_t i = 0; i < m; ++i) {
          const T v = x[start + i];
          block_nan += v != v;
          digits[i] = uint16_t(K::key(v) >> shift);
        }
        nan += block_nan;
        int64_t i = 0;
        for (; i + 2 <= m; i += 2) {
          ++tables[digits[i]];
          ++tables[kBins + digits[i + 1]];
        }
        if (i < m) ++tables[digits[i]];
      }
      nans[size_t(tid)] += nan;
    });
    if (std::any_of(nans.begin(), nans.end(), [](int64_t v) { return v > 0; })) raise_nan();
    return hist;
  }

  // The digit of the keys that have the prefix, over the full input.
  std::vector<int64_t> count_filtered(const Digit<U>& d) {
    const Digit<U> dd = d;
    return histogram([dd](const T* x, int64_t n, uint32_t* tables, int) {
      for (int64_t i = 0; i < n; ++i) {
        const U key = K::key(x[i]);
        tables[(i & 1) * kBins + ((key >> dd.shift) & U(kBins - 1))] += (key & dd.prefix_mask) == dd.prefix;
      }
    });
  }

  // Appends the keys that have the prefix to the thread's buffer; `group` of them exist in all. Match flags
  // are computed in a vectorisable loop, then read eight at a time, so runs without a match cost little.
  void compact(const Digit<U>& d, std::vector<KeyBuffer<U>>& buffers, int64_t group) {
    constexpr int64_t kBlock = 2048;
    for (auto& b : buffers) b.reserve_more(group / threads_ + kBlock);
    const Digit<U> dd = d;
    over_chunks([&](int64_t begin, int64_t end, int tid) {
      KeyBuffer<U>& buffer = buffers[size_t(tid)];
      uint8_t match[kBlock + 8];
      for (int64_t c = begin; c < end; ++c) {
        const T* chunk = chunk_scores(c);
        const int64_t n = chunk_size(c);
        for (int64_t start = 0; start < n; start += kBlock) {
          const T* x = chunk + start;
          const int64_t m = std::min(kBlock, n - start);
          for (int64_t i = 0; i < m; ++i) match[i] = (K::key(x[i]) & dd.prefix_mask) == dd.prefix;
          std::memset(match + m, 0, 8);
          int64_t found = 0;
          for (int64_t i = 0; i < m; ++i) found += match[i];
          if (found == 0) continue;
          U* out = buffer.reserve_more(found);
          for (int64_t w = 0; w < m; w += 8) {
            uint64_t word;
            std::memcpy(&word, match + w, sizeof word);
            if (word == 0) continue;
            for (int64_t i = w; i < w + 8; ++i) {
              if (match[i]) *out++ = K::key(x[i]);
            }
          }
          buffer.resize(buffer.size() + found);
        }
      }
    });
  }

  // The digit of the buffered keys that have the prefix; each buffer keeps only those (compacted in place).
  std::vector<int64_t> count_buffers(const Digit<U>& d, std::vector<KeyBuffer<U>>& buffers) {
    int64_t held = 0;
    for (const auto& b : buffers) held += b.size();
    const auto n = int64_t(buffers.size());
    const Digit<U> dd = d;
    at::parallel_for(0, n, held < 2 * kChunk ? n : 1, [&](int64_t begin, int64_t end) {
      const int tid = at::get_thread_num();
      uint32_t* tables = hist_->tables(tid);
      for (int64_t t = begin; t < end; ++t) {
        U* keys = buffers[size_t(t)].data();
        const int64_t size = buffers[size_t(t)].size();
        int64_t kept = 0;
        for (int64_t start = 0; start < size; start += int64_t(1) << 30) {  // uint32 counters cannot overflow
          const int64_t stop = std::min(size, start + (int64_t(1) << 30));
          for (int64_t i = start; i < stop; ++i) {
            const U key = keys[i];
            const bool match = (key & dd.prefix_mask) == dd.prefix;
            tables[(i & 1) * kBins + ((key >> dd.shift) & U(kBins - 1))] += match;
            keys[kept] = key;
            kept += match;
          }
          hist_->flush(tid);
        }
        buffers[size_t(t)].resize(kept);
      }
    });
    return hist_->merge_and_clear();
  }

  // out = chosen(x) for every score.
  template <typename Chosen>
  void mark(const Chosen& chosen) {
    over_chunks([&](int64_t begin, int64_t end, int) {
      for (int64_t c = begin; c < end; ++c) {
        const T* x = chunk_scores(c);
        bool* o = chunk_out(c);
        const int64_t n = chunk_size(c);
        for (int64_t i = 0; i < n; ++i) o[i] = chosen(x[i]);
      }
    });
  }

  // out = key < threshold, plus the first `take` keys equal to it in (tensor, flat index) order. Comparing
  // keys rather than values keeps the order the histograms used even where denormals are flushed to zero.
  void mark_with_ties(U threshold, int64_t take) {
    std::vector<int64_t> first(chunks_.size() + 1, 0);  // ties per chunk, then their exclusive scan
    over_chunks([&](int64_t begin, int64_t end, int) {
      for (int64_t c = begin; c < end; ++c) {
        const T* x = chunk_scores(c);
        const int64_t n = chunk_size(c);
        int64_t ties = 0;
        for (int64_t i = 0; i < n; ++i) ties += K::key(x[i]) == threshold;
        first[size_t(c) + 1] = ties;
      }
    });
    for (size_t c = 1; c < first.size(); ++c) first[c] += first[c - 1];
    over_chunks([&](int64_t begin, int64_t end, int) {
      for (int64_t c = begin; c < end; ++c) {
        const T* x = chunk_scores(c);
        bool* o = chunk_out(c);
        const int64_t n = chunk_size(c);
        if (first[size_t(c)] >= take) {
          for (int64_t i = 0; i < n; ++i) o[i] = K::key(x[i]) < threshold;
        } else if (first[size_t(c) + 1] <= take) {
          for (int64_t i = 0; i < n; ++i) o[i] = K::key(x[i]) <= threshold;
        } else {
          int64_t left = take - first[size_t(c)];  // ties this chunk still takes
          for (int64_t i = 0; i < n; ++i) {
            const U key = K::key(x[i]);
            const bool tie = key == threshold;
            o[i] = key < threshold || (tie && left > 0);
            left -= int64_t(tie);
          }
        }
      }
    });
  }

  [[noreturn]] void raise_nan() const {
    for (size_t t = 0; t < data_.size(); ++t) {
      TORCH_CHECK_VALUE(!at::isnan(data_[t]).any().item<bool>(), "scores[", t, "]: contains NaN");
    }
    TORCH_CHECK_VALUE(false, "scores: contain NaN");
  }

  int threads_;
  std::unique_ptr<Histograms> hist_;  // only for inputs above kSmall
  std::vector<at::Tensor> data_;
  std::vector<const T*> ptr_;
  std::vector<bool*> out_;
  std::vector<Chunk> chunks_;
  int64_t total_ = 0;
};

// Rank of entry j within its group: how many entries precede it in (key, column) order.
template <typename U>
int64_t rank_in_group(const U* keys, int64_t m, int64_t j) {
  int64_t rank = 0;
  for (int64_t i = 0; i < j; ++i) rank += keys[i] <= keys[j];
  for (int64_t i = j + 1; i < m; ++i) rank += keys[i] < keys[j];
  return rank;
}

}  // namespace

void select_smallest(at::TensorList scores, int64_t k, at::TensorList outs) {
  check_select_lists(scores, outs, c10::DeviceType::CPU);
  TORCH_CHECK_VALUE(k >= 0, "k: must be ≥ 0, got ", k);
  AT_DISPATCH_FLOATING_TYPES(scores[0].scalar_type(), "fls_select_smallest_cpu",
                             [&] { Selector<scalar_t>(scores, outs).run(k); });
}

void select_nm(const at::Tensor& scores_in, int64_t n, int64_t m, at::Tensor& out) {
  check_select_nm(scores_in, n, m, out, c10::DeviceType::CPU);
  const auto scores = scores_in.contiguous();
  const int64_t groups = scores.numel() / m;  // rows are contiguous, so groups are consecutive runs of m
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "fls_select_nm_cpu", [&] {
    using U = typename Keys<scalar_t>::U;
    const scalar_t* x = scores.const_data_ptr<scalar_t>();
    bool* o = out.mutable_data_ptr<bool>();
    at::parallel_for(0, groups, std::max<int64_t>(1, 4096 / m), [&](int64_t begin, int64_t end) {
      std::vector<U> keys(static_cast<size_t>(m));
      std::vector<int64_t> order(static_cast<size_t>(m));
      for (int64_t g = begin; g < end; ++g) {
        const scalar_t* xg = x + g * m;
        bool* og = o + g * m;
        for (int64_t j = 0; j < m; ++j) keys[size_t(j)] = Keys<scalar_t>::sort_key(xg[j]);
        if (m <= 32) {
          for (int64_t j = 0; j < m; ++j) og[j] = rank_in_group(keys.data(), m, j) < n;
          continue;
        }
        for (int64_t j = 0; j < m; ++j) order[size_t(j)] = j;
        const auto before = [&](int64_t a, int64_t b) {
          return keys[size_t(a)] < keys[size_t(b)] || (keys[size_t(a)] == keys[size_t(b)] && a < b);
        };
        std::nth_element(order.begin(), order.begin() + n, order.end(), before);
        std::fill(og, og + m, false);
        for (int64_t j = 0; j < n; ++j) og[order[size_t(j)]] = true;
      }
    });
  });
}

}  // namespace fls::cpu
