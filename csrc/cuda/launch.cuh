// Launch helpers shared by the CUDA kernels: the current stream, grid sizes, error checks.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

// for (q = this thread's first index; q < total; q += all threads of the grid)
#define FLS_GRID_STRIDE(q, total) \
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < (total); q += int64_t(gridDim.x) * blockDim.x)

namespace fls::cuda {

constexpr int kThreads = 256;

inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline int sm_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// Blocks for a grid-stride loop over `n` items: enough to fill the GPU a few times over, no more than needed.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t needed = (n + threads - 1) / threads;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(sm_count()) * 16)));
}

}  // namespace fls::cuda
