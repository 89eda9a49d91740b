// Order-preserving unsigned keys of floating-point scores, shared by the CPU and CUDA selection kernels.
//
// key(x) orders like x for every non-NaN x: flip all bits of negatives, only the sign bit of the rest.
// -0.0 is mapped to the key of +0.0 first, because the reference (a stable torch.sort) treats them as equal
// and keeps them in index order. sort_key(x) additionally sends every NaN to the largest key, where
// torch.sort puts NaN (after +inf, in index order).
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define FLS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FLS_HOST_DEVICE inline
#endif

namespace fls {

template <typename T>
struct Keys;

template <typename T, typename UInt>
struct KeysOf {
  using U = UInt;
  static constexpr int kBits = 8 * int(sizeof(U));
  static constexpr U kSign = U(1) << (kBits - 1);

  static FLS_HOST_DEVICE U bits(T x) {
    U u;
    std::memcpy(&u, &x, sizeof(U));
    return u;
  }
  static FLS_HOST_DEVICE T from_bits(U u) {
    T x;
    std::memcpy(&x, &u, sizeof(U));
    return x;
  }
  static FLS_HOST_DEVICE U key(T x) {
    U u = bits(x);
    u = u == kSign ? U(0) : u;
    return u ^ ((U(0) - (u >> (kBits - 1))) | kSign);
  }
  // The score whose key is `k` (the canonical +0.0 for the zero key).
  static FLS_HOST_DEVICE T value(U k) { return from_bits((k & kSign) ? (k ^ kSign) : U(~k)); }
  static FLS_HOST_DEVICE U sort_key(T x) { return x != x ? U(~U(0)) : key(x); }
};

template <>
struct Keys<float> : KeysOf<float, uint32_t> {};
template <>
struct Keys<double> : KeysOf<double, uint64_t> {};

}  // namespace fls
