// CUDA kernels of the selection ops: exact global k-smallest over a list of tensors, and N:M groups.
//
// select_smallest is a radix select on order-preserving keys (select_keys.h) read straight from the input
// tensors, whose pointers and sizes go to the GPU in one small table (nothing is concatenated). The work is
// cut into tiles of kTile scores of one tensor; a block finds its tile's tensor by binary search.
//   1. per level, a histogram of one 11-bit digit of the keys that share the prefix fixed so far (shared-memory
//      histograms, four per block so warps collide less, then one global atomicAdd per bin and block);
//      level 0 also counts NaN;
//   2. a one-block kernel scans the 2048 bins, finds the bin holding the k-th smallest and extends the prefix,
//      all in device memory, so levels follow each other without the host. The host reads back once, after
//      level 0, to raise on NaN or on k above the number of scores below +inf;
//   3. after the last level the prefix is the threshold key T. If only some of the keys equal to T are taken,
//      a counting pass writes each tile's number of ties and an exclusive scan (cub) their first ranks;
//      the marking pass writes key < T / key ≤ T per tile, and in the one tile where the taken ties end it
//      ranks ties in order with a block scan. Comparisons are on keys, never on values, so fast-math's
//      flushing of denormals cannot disagree with the histograms.
// select_nm: one thread per entry counts the entries of its group that precede it in (key, column) order.
#include <ATen/Dispatch.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include <cstring>
#include <limits>
#include <vector>

#include "../ops.h"
#include "../select_keys.h"
#include "launch.cuh"

namespace fls::cuda {
namespace {

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kSubHistograms = 4;
constexpr int64_t kTile = 16384;
constexpr int kPickThreads = kBins / 2;

// One non-empty input tensor.
struct Segment {
  const void* scores;
  bool* out;
  int64_t n;
  int64_t first_tile;  // tiles of the segments before it
};

// Device-side state of the search; `U` is the key type.
template <typename U>
struct State {
  U prefix;            // key bits fixed so far (the full threshold key after the last level)
  U prefix_mask;       // which bits those are
  long long rank;      // 0-based rank of the k-th smallest among the keys with the prefix
  long long less;      // keys below the prefix
  long long group;     // keys with the prefix (after the last level: keys equal to the threshold)
  long long selectable;  // keys below +inf (level 0)
  unsigned long long nan;  // NaN count (level 0)
};

// The segment holding `tile`: the last one whose first_tile ≤ tile.
__device__ __forceinline__ int find_segment(const Segment* segments, int count, int64_t tile) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (segments[mid].first_tile <= tile) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

template <typename U>
__global__ void set_rank_kernel(State<U>* state, long long k) {
  state->rank = k - 1;
}

// Counts digit (key >> shift) & (2^bits − 1) of the keys that have the prefix, into `hist`. At the top level
// it also counts NaN: keys below key(−inf) = `lowest` or above key(+inf) = `highest`.
template <typename T, bool kTop>
__global__ void histogram_kernel(const Segment* segments, int count, int64_t tiles, State<typename Keys<T>::U>* state,
                                 unsigned long long* hist, int shift, int bits, typename Keys<T>::U lowest,
                                 typename Keys<T>::U highest) {
  using K = Keys<T>;
  using U = typename K::U;
  __shared__ unsigned int sub[kSubHistograms][kBins];
  for (int b = threadIdx.x; b < kSubHistograms * kBins; b += blockDim.x) (&sub[0][0])[b] = 0;
  __syncthreads();
  const U prefix = kTop ? U(0) : state->prefix, mask = kTop ? U(0) : state->prefix_mask;
  const U digit_mask = U((U(1) << bits) - 1);
  unsigned int* mine = sub[(threadIdx.x / 32) % kSubHistograms];
  unsigned long long nan = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Segment seg = segments[find_segment(segments, count, tile)];
    const T* x = static_cast<const T*>(seg.scores);
    const int64_t begin = (tile - seg.first_tile) * kTile, end = min(seg.n, begin + kTile);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const U key = K::key(x[i]);
      if (kTop) nan += (key < lowest) | (key > highest);
      if (kTop || (key & mask) == prefix) atomicAdd(&mine[(key >> shift) & digit_mask], 1u);
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    unsigned long long total = 0;
    for (int s = 0; s < kSubHistograms; ++s) total += sub[s][b];
    if (total != 0) atomicAdd(&hist[b], total);
  }
  if (kTop) {
    using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
    __shared__ typename Reduce::TempStorage temp;
    const unsigned long long block_nan = Reduce(temp).Sum(nan);
    if (threadIdx.x == 0 && block_nan != 0) atomicAdd(&state->nan, block_nan);
  }
}

// Finds the bin holding the rank-th key, extends the prefix by it, and clears `hist` for the next level.
// At the top level it also records how many keys lie below +inf.
template <typename U>
__global__ void pick_kernel(State<U>* state, unsigned long long* hist, int shift, int bits, int inf_bin) {
  using Scan = cub::BlockScan<long long, kPickThreads>;
  __shared__ typename Scan::TempStorage temp;
  const long long rank = state->rank;
  long long counts[2], inclusive[2];
  for (int j = 0; j < 2; ++j) counts[j] = (long long)hist[2 * threadIdx.x + j];
  Scan(temp).InclusiveSum(counts, inclusive);
  for (int j = 0; j < 2; ++j) {
    const int bin = 2 * threadIdx.x + j;
    const long long before = inclusive[j] - counts[j];
    if (counts[j] > 0 && before <= rank && rank < inclusive[j]) {
      state->prefix |= U(bin) << shift;
      state->prefix_mask |= U((U(1) << bits) - 1) << shift;
      state->less += before;
      state->rank = rank - before;
      state->group = counts[j];
    }
    if (inf_bin >= 0 && bin == inf_bin - 1) state->selectable = inclusive[j];
    hist[bin] = 0;
  }
}

// Per tile: how many keys equal the threshold (only when some, not all, of them are taken).
template <typename T>
__global__ void count_ties_kernel(const Segment* segments, int count, int64_t tiles,
                                  const State<typename Keys<T>::U>* state, long long k, long long* tile_ties) {
  using K = Keys<T>;
  using U = typename K::U;
  if (k - state->less == state->group) return;
  const U threshold = state->prefix;
  using Reduce = cub::BlockReduce<long long, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Segment seg = segments[find_segment(segments, count, tile)];
    const T* x = static_cast<const T*>(seg.scores);
    const int64_t begin = (tile - seg.first_tile) * kTile, end = min(seg.n, begin + kTile);
    long long ties = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) ties += K::key(x[i]) == threshold;
    const long long total = Reduce(temp).Sum(ties);
    if (threadIdx.x == 0) tile_ties[tile] = total;
    __syncthreads();  // temp is reused by the next tile
  }
}

// out = key < T, plus the first `take` keys equal to T in (tensor, flat index) order; all False when k = 0.
template <typename T>
__global__ void mark_kernel(const Segment* segments, int count, int64_t tiles, const State<typename Keys<T>::U>* state,
                            long long k, const long long* tile_first, const long long* tile_ties) {
  using K = Keys<T>;
  using U = typename K::U;
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage temp;
  const U threshold = state->prefix;
  const long long take = k - state->less;
  const bool partial = take != state->group;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const Segment seg = segments[find_segment(segments, count, tile)];
    const T* x = static_cast<const T*>(seg.scores);
    const int64_t begin = (tile - seg.first_tile) * kTile, end = min(seg.n, begin + kTile);
    if (k == 0) {
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) seg.out[i] = false;
      continue;
    }
    const long long first = partial ? tile_first[tile] : 0;
    const long long ties = partial ? tile_ties[tile] : 0;
    if (!partial || first + ties <= take) {
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) seg.out[i] = K::key(x[i]) <= threshold;
    } else if (first >= take) {
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) seg.out[i] = K::key(x[i]) < threshold;
    } else {
      // The tile where the taken ties end: rank its ties in order, blockDim scores at a time.
      long long rank = first;
      for (int64_t start = begin; start < end; start += blockDim.x) {
        const int64_t i = start + threadIdx.x;
        const U key = i < end ? K::key(x[i]) : U(0);
        const int tie = i < end && key == threshold;
        int before = 0, total = 0;
        Scan(temp).ExclusiveSum(tie, before, total);
        if (i < end) seg.out[i] = key < threshold || (tie && rank + before < take);
        rank += total;
        __syncthreads();  // temp is reused by the next step
      }
    }
  }
}

template <typename T>
void select_smallest_impl(at::TensorList scores, int64_t k, at::TensorList outs) {
  using K = Keys<T>;
  using U = typename K::U;
  const auto device = scores[0].device();
  std::vector<at::Tensor> inputs;  // keeps contiguous copies alive while the kernels run
  std::vector<Segment> host;
  int64_t tiles = 0, total = 0;
  for (size_t t = 0; t < scores.size(); ++t) {
    const int64_t n = scores[t].numel();
    total += n;
    if (n == 0) continue;
    inputs.push_back(scores[t].contiguous());
    host.push_back({inputs.back().const_data_ptr<T>(), outs[t].mutable_data_ptr<bool>(), n, tiles});
    tiles += (n + kTile - 1) / kTile;
  }
  if (total == 0) {
    TORCH_CHECK_VALUE(k == 0, "k: ", k, " exceeds the 0 scores below +inf");
    return;
  }
  const int count = int(host.size());
  auto segments_cpu = at::empty({int64_t(count * sizeof(Segment))}, at::TensorOptions().dtype(at::kByte));
  std::memcpy(segments_cpu.data_ptr(), host.data(), host.size() * sizeof(Segment));
  const auto segments_gpu = segments_cpu.to(device);
  const auto* segments = static_cast<const Segment*>(segments_gpu.const_data_ptr());

  const auto bytes = at::TensorOptions().dtype(at::kByte).device(device);
  auto state_buffer = at::zeros({int64_t(sizeof(State<U>))}, bytes);
  auto* state = static_cast<State<U>*>(state_buffer.data_ptr());
  auto hist_buffer = at::zeros({kBins}, at::TensorOptions().dtype(at::kLong).device(device));
  auto* hist = reinterpret_cast<unsigned long long*>(hist_buffer.data_ptr<int64_t>());
  set_rank_kernel<U><<<1, 1, 0, stream()>>>(state, (long long)k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // uint32 shared-memory counters: keep every block's share of the scores below 2^31.
  const int64_t blocks = std::min<int64_t>(tiles, std::max<int64_t>(int64_t(sm_count()) * 8, total >> 31));
  int shift = K::kBits - kDigitBits;
  const U lowest = K::key(-std::numeric_limits<T>::infinity()), highest = K::key(std::numeric_limits<T>::infinity());
  const int inf_bin = int(highest >> shift);
  histogram_kernel<T, true><<<unsigned(blocks), kThreads, 0, stream()>>>(segments, count, tiles, state, hist, shift,
                                                                         kDigitBits, lowest, highest);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pick_kernel<U><<<1, kPickThreads, 0, stream()>>>(state, hist, shift, kDigitBits, inf_bin);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  State<U> top;
  C10_CUDA_CHECK(cudaMemcpyAsync(&top, state, sizeof(State<U>), cudaMemcpyDeviceToHost, stream()));
  C10_CUDA_CHECK(cudaStreamSynchronize(stream()));
  if (top.nan > 0) {
    for (size_t t = 0; t < scores.size(); ++t) {
      TORCH_CHECK_VALUE(!at::isnan(scores[t]).any().item<bool>(), "scores[", t, "]: contains NaN");
    }
    TORCH_CHECK_VALUE(false, "scores: contain NaN");
  }
  TORCH_CHECK_VALUE(k <= top.selectable, "k: ", k, " exceeds the ", top.selectable, " scores below +inf");

  if (k > 0) {
    while (shift > 0) {
      const int bits = std::min(kDigitBits, shift);
      shift -= bits;
      histogram_kernel<T, false><<<unsigned(blocks), kThreads, 0, stream()>>>(segments, count, tiles, state, hist,
                                                                              shift, bits, lowest, highest);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      pick_kernel<U><<<1, kPickThreads, 0, stream()>>>(state, hist, shift, bits, -1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  // Tie ranks per tile (written only when some, not all, ties are taken; the scan then reads them).
  auto tie_buffer = at::zeros({2 * tiles}, at::TensorOptions().dtype(at::kLong).device(device));
  auto* tile_ties = reinterpret_cast<long long*>(tie_buffer.data_ptr<int64_t>());
  long long* tile_first = tile_ties + tiles;
  if (k > 0) {
    count_ties_kernel<T><<<unsigned(blocks), kThreads, 0, stream()>>>(segments, count, tiles, state, (long long)k,
                                                                      tile_ties);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    size_t scan_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, tile_ties, tile_first, tiles, stream()));
    auto scan_temp = at::empty({int64_t(scan_bytes)}, bytes);
    C10_CUDA_CHECK(
        cub::DeviceScan::ExclusiveSum(scan_temp.data_ptr(), scan_bytes, tile_ties, tile_first, tiles, stream()));
  }
  mark_kernel<T><<<unsigned(blocks), kThreads, 0, stream()>>>(segments, count, tiles, state, (long long)k, tile_first,
                                                              tile_ties);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
__global__ void select_nm_kernel(const T* __restrict__ x, bool* __restrict__ out, int64_t total, int64_t n,
                                 int64_t m) {
  using K = Keys<T>;
  FLS_GRID_STRIDE(q, total) {
    const int64_t group = q - q % m, j = q - group;
    const auto key = K::sort_key(x[q]);
    int64_t rank = 0;
    for (int64_t i = 0; i < m; ++i) {
      const auto other = K::sort_key(x[group + i]);
      rank += other < key || (other == key && i < j);
    }
    out[q] = rank < n;
  }
}

}  // namespace

void select_smallest(at::TensorList scores, int64_t k, at::TensorList outs) {
  check_select_lists(scores, outs, c10::DeviceType::CUDA);
  TORCH_CHECK_VALUE(k >= 0, "k: must be ≥ 0, got ", k);
  const c10::cuda::CUDAGuard guard(scores[0].device());
  AT_DISPATCH_FLOATING_TYPES(scores[0].scalar_type(), "fls_select_smallest_cuda",
                             [&] { select_smallest_impl<scalar_t>(scores, k, outs); });
}

void select_nm(const at::Tensor& scores_in, int64_t n, int64_t m, at::Tensor& out) {
  check_select_nm(scores_in, n, m, out, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const auto scores = scores_in.contiguous();
  const int64_t total = scores.numel();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), "fls_select_nm_cuda", [&] {
    select_nm_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream()>>>(
        scores.const_data_ptr<scalar_t>(), out.mutable_data_ptr<bool>(), total, n, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace fls::cuda
