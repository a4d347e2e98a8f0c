// Eight floats as one value, with GCC's vector extensions: one AVX register on x86 with AVX, two SSE or NEON
// registers elsewhere, so the kernels need no intrinsics of one instruction set. Loads and stores of float32 and
// bfloat16 (whose bits are a float32's upper half), and the reductions the kernels need.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace rpserve {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline v8 load8(const c10::BFloat16* p) {
  typedef uint16_t u16x8 __attribute__((vector_size(16)));
  typedef uint32_t u32x8 __attribute__((vector_size(32)));
  u16x8 half;
  std::memcpy(&half, p, sizeof half);
  const u32x8 bits = __builtin_convertvector(half, u32x8) << 16;
  v8 v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

inline void store8(c10::BFloat16* p, v8 v) {
  for (int i = 0; i < 8; ++i) p[i] = c10::BFloat16(v[i]);  // round to nearest even, as torch rounds
}

inline float sum8(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// The sums of eight vectors side by side, in 7 shuffled additions instead of eight horizontal sums.
inline v8 sums8(const v8* a) {
  v8 x[4], y[2];
  for (int i = 0; i < 4; ++i) {
    x[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {
    y[i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(x[2 * i], x[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  return __builtin_shufflevector(y[0], y[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(y[0], y[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// e^r for |r| <= ln2 / 2: the Taylor polynomial of degree 7, by Horner's rule (one float or eight).
template <typename F>
inline F exp_polynomial(F r) {
  F p = r * 0.f + 1.f / 5040;
  p = p * r + 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  return p * r + 1.f;
}

// exp(x) in plain float arithmetic without branches or calls, so that loops over it vectorise (std::exp is one
// call per element): 2^n p(r) with x = n ln2 + r, |r| <= ln2 / 2, p the Taylor polynomial of degree 7 (relative
// error below 3e-7); x is clamped to [-87, 88], where float32's exponent holds 2^n.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 in two parts: n * the first is exact
  const float p = exp_polynomial(r);
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof power);
  return p * power;
}

// fast_exp of eight floats at once, the same arithmetic written on vectors (for loops the compiler does not
// vectorise by itself).
inline v8 fast_exp8(v8 x) {
  typedef int32_t i8 __attribute__((vector_size(32)));
  x = x < -87.0f ? v8{} - 87.0f : x;
  x = x > 88.0f ? v8{} + 88.0f : x;
  constexpr float kRound = 12582912.0f;
  const v8 n = (x * 1.44269504088896341f + kRound) - kRound;
  const v8 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  const v8 p = exp_polynomial(r);
  const i8 bits = (__builtin_convertvector(n, i8) + 127) << 23;
  v8 power;
  std::memcpy(&power, &bits, sizeof power);
  return p * power;
}

// `v` rounded to T's precision (the identity for float).
template <typename T>
inline v8 round8(v8 v) {
  T rounded[8];
  store8(rounded, v);
  return load8(rounded);
}

}  // namespace rpserve
