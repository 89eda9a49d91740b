// A branch-free select for the CPU kernels' inner loops.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fls::cpu {

// `value` where `flag` (a bool tensor's byte) is set, `otherwise` elsewhere, as a bit blend. Written as `?:`,
// GCC (under the default -ftrapping-math) will not evaluate the floating-point work feeding `value` for every
// element, and the loop does not vectorise; as a blend both sides are computed and it does.
template <typename T>
inline T blend(uint8_t flag, T value, T otherwise) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(T) == sizeof(U), "float or double only");
  U v, o;
  std::memcpy(&v, &value, sizeof(U));
  std::memcpy(&o, &otherwise, sizeof(U));
  const U take = U(0) - U(flag != 0);
  const U bits = (v & take) | (o & ~take);
  T result;
  std::memcpy(&result, &bits, sizeof(U));
  return result;
}

}  // namespace fls::cpu
