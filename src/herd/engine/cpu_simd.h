// Scalar and AVX-512 helpers shared by herd's C++ CPU kernels (paged_decode.cpp,
// cpu_layer_ops.cpp, cpu_decoder.cpp): activations are float32 or bf16 (uint16_t), widened to
// float32 for arithmetic and rounded to nearest even on store, as torch rounds them. HERD_AVX512,
// or HERD_AVX2 on CPUs with AVX2 and FMA but no AVX-512, says which vector code a build has.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

static inline float to_f(float x) { return x; }
static inline float to_f(uint16_t x) {
  uint32_t u = (uint32_t)x << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void put(float x, float* o) { *o = x; }
static inline void put(float x, uint16_t* o) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;  // kept quiet; a select, so loops vectorise
  *o = (uint16_t)(nan ? (u >> 16) | 0x40 : rounded);
}

template <typename T>
static inline float rnd(float x) {  // x as the activation dtype holds it
  T t;
  put(x, &t);
  return to_f(t);
}

// e^x in plain code that the compiler vectorises in `omp simd` loops (builds without AVX-512,
// where a libm call per element took most of a softmax): exp16's range reduction and polynomial
// (within 4 ulp of expf); x below -87 gives ~0, above ~88.4 inf, NaN NaN. (floorf, and the
// clamps without -fno-trapping-math, kept GCC 12 from vectorising it.)
static inline float exp_poly(float x) {
  x = x < -87.f ? -87.f : (x > 88.73f ? 88.73f : x);  // 2^128 below is inf's bit pattern
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // rint: + 1.5 * 2^23
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = ((int32_t)n + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define HERD_AVX512 1
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const uint16_t* p) {
  __m256i v = _mm256_loadu_si256((const __m256i*)p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// The first n (< 16 allowed) lanes: tails take the same vector arithmetic as whole vectors, so
// a value's rounding never depends on where a row was split.
static inline __mmask16 first(int64_t n) { return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1); }
static inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 load16(const uint16_t* p, __mmask16 m) {
  __m256i v = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
// bf16 bits of 16 floats, rounded to nearest even, NaN kept quiet (as put)
static inline __m256i bf16_bits(__m512 x) {
#if defined(__AVX512BF16__)
  return (__m256i)_mm512_cvtneps_pbh(x);  // one instruction (denormals flush to zero)
#else
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
#endif
}
static inline void store16(float* p, __m512 x, __mmask16 m) { _mm512_mask_storeu_ps(p, m, x); }
static inline void store16(uint16_t* p, __m512 x, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, bf16_bits(x));
}
template <typename T>
static inline __m512 vrnd(__m512 x) {  // rnd of 16 lanes
  if constexpr (sizeof(T) == 4) return x;
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_bits(x)), 16));
}

// e^x: 2^n * p(r), |r| <= ln2/2, degree-6 Taylor (~1 ulp); x below -87 gives ~0, above 88 inf.
static inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HERD_AVX2 1  // AVX2 without AVX-512: the packed tile (cpu_linear.h) uses it
// Loads and stores of the first n (< 8 allowed) of 8 lanes; bf16 rounded to nearest even, NaN
// kept quiet, bit for bit as put. AVX2 has no 16-bit masked moves: bf16 tails go through a copy.
static inline __m256i first8(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)std::min<int64_t>(n, 8)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256 load8(const float* p, int64_t n) { return _mm256_maskload_ps(p, first8(n)); }
static inline __m256 load8(const uint16_t* p, int64_t n) {
  __m128i v;
  if (n >= 8) {
    v = _mm_loadu_si128((const __m128i*)p);
  } else {
    uint16_t tail[8] = {};
    std::memcpy(tail, p, n * 2);
    v = _mm_loadu_si128((const __m128i*)tail);
  }
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
static inline __m256i bf16_bits8(__m256 x) {  // each lane's bf16 bits, in its low 16 bits
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
  return _mm256_srli_epi32(r, 16);
}
template <typename T>
static inline __m256 vrnd8(__m256 x) {  // rnd of 8 lanes
  if constexpr (sizeof(T) == 4) return x;
  return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits8(x), 16));
}
static inline void store8(float* p, __m256 x, int64_t n) { _mm256_maskstore_ps(p, first8(n), x); }
static inline void store8(uint16_t* p, __m256 x, int64_t n) {
  const __m256i r = bf16_bits8(x);  // 16-bit values: packus keeps them, within each 128-bit lane
  const __m128i bits = _mm256_castsi256_si128(
      _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0b1000));
  if (n >= 8) return _mm_storeu_si128((__m128i*)p, bits);
  uint16_t tail[8];
  _mm_storeu_si128((__m128i*)tail, bits);
  std::memcpy(p, tail, n * 2);
}
#endif

// ---- vec: a float32 vector of the widest width a build has, for kernels written once for both
// AVX-512 (16 lanes) and AVX2 (8 lanes); HERD_VEC says a build has one.
#if defined(HERD_AVX512) || defined(HERD_AVX2)
#define HERD_VEC 1
namespace vec {
#if defined(HERD_AVX512)
using F = __m512;
constexpr int N = 16;
static inline F zero() { return _mm512_setzero_ps(); }
static inline F set(float x) { return _mm512_set1_ps(x); }
static inline F load(const float* p) { return _mm512_loadu_ps(p); }
static inline F load(const uint16_t* p) { return load16(p); }
static inline void store(float* p, F x) { _mm512_storeu_ps(p, x); }
static inline F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
static inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
static inline F add(F a, F b) { return _mm512_add_ps(a, b); }
static inline F sub(F a, F b) { return _mm512_sub_ps(a, b); }
static inline F max(F a, F b) { return _mm512_max_ps(a, b); }
static inline F div(F a, F b) { return _mm512_div_ps(a, b); }
static inline F exp(F x) { return exp16(x); }
template <typename T>
static inline F rnd(F x) { return vrnd<T>(x); }
template <typename T>
static inline F load_first(const T* p, int64_t n) { return load16(p, first(n)); }
template <typename T>
static inline void store_first(T* p, F x, int64_t n) { store16(p, x, first(n)); }
// Lane masks: which lanes of a vector of int32 positions are at least j.
using M = __mmask16;
static inline M all() { return 0xffff; }
static inline M at_least(const int32_t* pos, int32_t j) {
  return _mm512_cmpge_epi32_mask(_mm512_loadu_si512(pos), _mm512_set1_epi32(j));
}
static inline F max_where(M ok, F a, F b) { return _mm512_mask_max_ps(a, ok, a, b); }
static inline F zero_unless(M ok, F x) { return _mm512_maskz_mov_ps(ok, x); }
// v[i] lane j <- v[j] lane i: sixteen vectors of 16 lanes transposed in registers.
static inline void transpose(F* v) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int k = 0; k < 2; k++) {
      const __m512d a = _mm512_castps_pd(t[i + k]), b = _mm512_castps_pd(t[i + k + 2]);
      v[i + 2 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      v[i + 2 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int i = 0; i < 16; i += 8)
    for (int k = 0; k < 4; k++) {
      t[i + k] = _mm512_shuffle_f32x4(v[i + k], v[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(v[i + k], v[i + k + 4], 0xdd);
    }
  for (int k = 0; k < 8; k++) {
    v[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    v[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
  }
}
// The lane sums of 16 vectors as one vector (s[j] = sum of v[j]): a transpose-and-add tree, ~3
// instructions a vector where a reduction per vector costs ~8.
static inline F lane_sums(const F* v) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; i++)
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++) {
    const __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const int lo = _MM_SHUFFLE(2, 0, 2, 0), hi = _MM_SHUFFLE(3, 1, 3, 1);
  const __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], lo),
                                  _mm512_shuffle_f32x4(u[0], u[1], hi));
  const __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], lo),
                                  _mm512_shuffle_f32x4(u[2], u[3], hi));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, lo), _mm512_shuffle_f32x4(w0, w1, hi));
}
#else
using F = __m256;
constexpr int N = 8;
static inline F zero() { return _mm256_setzero_ps(); }
static inline F set(float x) { return _mm256_set1_ps(x); }
static inline F load(const float* p) { return _mm256_loadu_ps(p); }
static inline F load(const uint16_t* p) { return load8(p, 8); }
static inline void store(float* p, F x) { _mm256_storeu_ps(p, x); }
static inline F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
static inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
static inline F add(F a, F b) { return _mm256_add_ps(a, b); }
static inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
static inline F max(F a, F b) { return _mm256_max_ps(a, b); }
static inline F div(F a, F b) { return _mm256_div_ps(a, b); }
// e^x as exp16 computes it: the same reduction and polynomial, 2^n built in the exponent bits
static inline F exp(F x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  for (float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i bits = _mm256_slli_epi32(  // n <= 128: 128 gives inf's bits, as it should
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
template <typename T>
static inline F rnd(F x) { return vrnd8<T>(x); }
template <typename T>
static inline F load_first(const T* p, int64_t n) { return load8(p, n); }
template <typename T>
static inline void store_first(T* p, F x, int64_t n) { store8(p, x, n); }
using M = __m256;  // all ones in the lanes that are on
static inline M all() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
static inline M at_least(const int32_t* pos, int32_t j) {
  const __m256i p = _mm256_loadu_si256((const __m256i*)pos);
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(p, _mm256_set1_epi32(j - 1)));
}
static inline F max_where(M ok, F a, F b) { return _mm256_blendv_ps(a, _mm256_max_ps(a, b), ok); }
static inline F zero_unless(M ok, F x) { return _mm256_and_ps(ok, x); }
// v[i] lane j <- v[j] lane i: eight vectors of 8 lanes transposed in registers.
static inline void transpose(F* v) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int k = 0; k < 2; k++) {
      const __m256d a = _mm256_castps_pd(t[i + k]), b = _mm256_castps_pd(t[i + k + 2]);
      u[i + 2 * k] = _mm256_castpd_ps(_mm256_unpacklo_pd(a, b));
      u[i + 2 * k + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(a, b));
    }
  for (int k = 0; k < 4; k++) {
    v[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    v[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}
// The lane sums of 8 vectors as one vector: pairwise adds within 128-bit lanes, then the halves.
static inline F lane_sums(const F* v) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}
#endif
}  // namespace vec
#endif
