// The elementwise work between a decoder layer's linears on CPUs, one call per gap
// (herd.engine.cpu_layer_ops builds and calls this file; cpu_decoder.cpp uses the row functions):
// residual add + RMSNorm, RoPE in place, SiLU-and-mul. In eager PyTorch each is 4-9 ops and as
// many passes over the rows; here each is one pass, vectorised, rows split over the threads.
// Rounding mirrors the eager bf16 model: every op's result rounded to the activation dtype.
#include "cpu_simd.h"

// ---- one row --------------------------------------------------------------------------------
// out = rnd(w * rnd(x / rms(x))), the statistics in float32, as the eager RMSNorm
template <typename T>
static void rmsnorm_row(const T* x, const T* w, int64_t H, float eps, T* out) {
#ifdef HERD_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < H; k += 16) {
    const __m512 v = load16(x + k, first(H - k));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(acc) / H + eps));
  for (int64_t k = 0; k < H; k += 16) {
    const __mmask16 m = first(H - k);
    const __m512 normed = vrnd<T>(_mm512_mul_ps(load16(x + k, m), inv));
    store16(out + k, _mm512_mul_ps(load16(w + k, m), normed), m);
  }
#else
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t k = 0; k < H; k++) ss += to_f(x[k]) * to_f(x[k]);
  const float inv = 1.f / std::sqrt(ss / H + eps);
  for (int64_t k = 0; k < H; k++) put(to_f(w[k]) * rnd<T>(to_f(x[k]) * inv), out + k);
#endif
}

template <typename T>  // residual = rnd(residual + x), as eager's x + y
static void add_row(T* residual, const T* x, int64_t H) {
#ifdef HERD_AVX512
  for (int64_t k = 0; k < H; k += 16) {
    const __mmask16 m = first(H - k);
    store16(residual + k, _mm512_add_ps(load16(residual + k, m), load16(x + k, m)), m);
  }
#else
  for (int64_t k = 0; k < H; k++) put(to_f(residual[k]) + to_f(x[k]), residual + k);
#endif
}

// Rotate `heads` heads of one token in place (half-split layout): x*cos + rotate_half(x)*sin,
// each product rounded, cos/sin (dtype C) rounded to the activation dtype first, as eager does.
template <typename T, typename C>
static void rope_row(T* x, int64_t heads, int64_t D, const C* cos, const C* sin) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; h++) {
    T* p = x + h * D;
#ifdef HERD_AVX512
    for (int64_t d = 0; d < half; d += 16) {
      const __mmask16 m = first(half - d);
      const __m512 a = load16(p + d, m), b = load16(p + half + d, m);
      const __m512 ca = vrnd<T>(load16(cos + d, m)), cb = vrnd<T>(load16(cos + half + d, m));
      const __m512 sa = vrnd<T>(load16(sin + d, m)), sb = vrnd<T>(load16(sin + half + d, m));
      const __m512 lo = _mm512_add_ps(vrnd<T>(_mm512_mul_ps(a, ca)),
                                      vrnd<T>(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), b), sa)));
      const __m512 hi = _mm512_add_ps(vrnd<T>(_mm512_mul_ps(b, cb)), vrnd<T>(_mm512_mul_ps(a, sb)));
      store16(p + d, lo, m);
      store16(p + half + d, hi, m);
    }
#else
#pragma omp simd  // iteration d reads and writes only p[d] and p[half + d]
    for (int64_t d = 0; d < half; d++) {
      const float a = to_f(p[d]), b = to_f(p[half + d]);
      const float ca = rnd<T>(to_f(cos[d])), cb = rnd<T>(to_f(cos[half + d]));
      const float sa = rnd<T>(to_f(sin[d])), sb = rnd<T>(to_f(sin[half + d]));
      put(rnd<T>(a * ca) + rnd<T>(-b * sa), p + d);
      put(rnd<T>(b * cb) + rnd<T>(a * sb), p + half + d);
    }
#endif
  }
}

template <typename T>  // out = rnd(rnd(silu(gate)) * up); silu(g) = g / (1 + e^-g), as torch's
static void swiglu_row(const T* gate, const T* up, int64_t n, T* out) {
#ifdef HERD_AVX512
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = first(n - k);
    const __m512 g = load16(gate + k, m);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = vrnd<T>(_mm512_div_ps(g, _mm512_add_ps(one, e)));
    store16(out + k, _mm512_mul_ps(silu, load16(up + k, m)), m);
  }
#else
#pragma omp simd
  for (int64_t k = 0; k < n; k++) {
    const float g = to_f(gate[k]);
    put(rnd<T>(g / (1.f + exp_poly(-g))) * to_f(up[k]), out + k);
  }
#endif
}

// ---- every row: the entries herd.engine.cpu_layer_ops calls ---------------------------------
// Rows split over the threads only when there is enough work to pay for waking them (a batch-64
// decode row set of 768 is ~10 us on one thread).
static inline int team(int64_t elems, int nthreads) { return elems >= (1 << 16) ? nthreads : 1; }

template <typename T>  // residual (may be null) += x; out = rmsnorm(residual or x)
static void add_rmsnorm(T* residual, const T* x, const T* w, int64_t rows, int64_t H, float eps,
                        T* out, int nthreads) {
#pragma omp parallel for num_threads(team(rows * H, nthreads)) schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const T* src = x + r * H;
    if (residual) {
      add_row(residual + r * H, src, H);
      src = residual + r * H;
    }
    rmsnorm_row(src, w, H, eps, out + r * H);
  }
}

template <typename T>  // x: rows of `heads` heads (row stride `stride`); cos/sin [rows, D]
static void rope(T* x, int64_t stride, int64_t rows, int64_t heads, int64_t D, const T* cos,
                 const T* sin, int nthreads) {
#pragma omp parallel for num_threads(team(rows * heads * D, nthreads)) schedule(static)
  for (int64_t r = 0; r < rows; r++) rope_row(x + r * stride, heads, D, cos + r * D, sin + r * D);
}

template <typename T>  // gate_up [rows, 2n] -> out [rows, n]
static void silu_and_mul(const T* gu, int64_t rows, int64_t n, T* out, int nthreads) {
#pragma omp parallel for num_threads(team(rows * n, nthreads)) schedule(static)
  for (int64_t r = 0; r < rows; r++) swiglu_row(gu + r * 2 * n, gu + r * 2 * n + n, n, out + r * n);
}

#define ENTRIES(SUFFIX, T)                                                                     \
  extern "C" void herd_add_rmsnorm_##SUFFIX(void* residual, const void* x, const void* w,     \
                                            int64_t rows, int64_t H, float eps, void* out,    \
                                            int nthreads) {                                   \
    add_rmsnorm<T>((T*)residual, (const T*)x, (const T*)w, rows, H, eps, (T*)out, nthreads);  \
  }                                                                                            \
  extern "C" void herd_rope_##SUFFIX(void* x, int64_t stride, int64_t rows, int64_t heads,    \
                                     int64_t D, const void* cos, const void* sin,             \
                                     int nthreads) {                                          \
    rope<T>((T*)x, stride, rows, heads, D, (const T*)cos, (const T*)sin, nthreads);           \
  }                                                                                            \
  extern "C" void herd_silu_and_mul_##SUFFIX(const void* gu, int64_t rows, int64_t n,         \
                                             void* out, int nthreads) {                       \
    silu_and_mul<T>((const T*)gu, rows, n, (T*)out, nthreads);                                \
  }
ENTRIES(f32, float)
ENTRIES(bf16, uint16_t)
