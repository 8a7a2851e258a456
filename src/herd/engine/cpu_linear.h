// bf16 and float32 projections for CPUs (cpu_decoder.cpp and cpu_block_linear.cpp include this
// file): out[m, n] = rnd(bias[n] + x[m, :] . w[n, :]) for the rows of x, from plain weight rows
// (float32, and bf16 builds without AVX512-BF16) or from weights packed in blocks (packed_linear:
// bf16 with AVX512-BF16 or AVX2, float32 with AVX-512 or AVX2).
#pragma once
#include "cpu_simd.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

// ---- out[m, n] = rnd(bias[n] + x[m, :] . w[n, :]) for rows n in [n0, n1), m < M ----------------
// One weight row at a time against up to 4 batch rows: the weights are read as one sequential
// stream (interleaving 4 weight rows halved the bandwidth on a 2-core EPYC). bf16 is widened to
// float32 on load (faster there than AVX512-BF16 dot products at batch 1: 32 vs 26 GB/s, and the
// products are exact), two accumulators per batch row; masked loads take any K.
#if defined(HERD_AVX512)
static inline __m512 widen(__mmask16 mask, const float* p) { return _mm512_maskz_loadu_ps(mask, p); }
static inline __m512 widen(__mmask16 mask, const uint16_t* p) {
  __m256i v = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
#endif

constexpr int64_t PACK_COLS = 32;  // outputs of a packed weight block
#if defined(HERD_AVX512) || defined(HERD_AVX2)
#define HERD_PACKED 1  // this build has a packed tile (below)
#endif
#if defined(HERD_AVX2)
constexpr int64_t PACK_ROWS = 6;  // batch rows of a packed tile: 12 accumulators of 16 registers
// bf16 takes 4: 8 accumulators, 4 widened weight vectors and 2 broadcasts; 6 spilled (2 threads,
// 24-64 rows: ~105-140 vs ~130-175 GFLOP/s; 5 varied between the two)
constexpr int64_t PACK_ROWS_BF16 = 4;
#else
constexpr int64_t PACK_ROWS = 11;  // batch rows of a packed tile (12 ran ~8% slower: spills)
constexpr int64_t PACK_ROWS_BF16 = PACK_ROWS;
#endif
template <typename T>
constexpr int64_t pack_rows() { return sizeof(T) == 2 ? PACK_ROWS_BF16 : PACK_ROWS; }

#if defined(HERD_PACKED)
// Weights stream from DRAM once a step; the hardware prefetcher alone fell behind as soon as a row
// cost more than a few instructions (batch 4: 20 GB/s, batch 8: 13). Asking for the line 4 KiB
// ahead, into L2 (as paged_decode does for K/V), one line per line read, kept 24-30 GB/s up to
// batch 8 (2 threads, 200 MB of rows: batch 4 9.8 -> 7.0 ms, batch 8 14.7 -> 10.6 ms; 2 and
// 8 KiB, or into L1, were slower). Prefetches past the end of a weight are harmless: they never
// fault.
static constexpr int64_t WEIGHT_PREFETCH_BYTES = 4096;
template <typename T>
static inline void prefetch_weights(const T* p) {
  for (size_t line = 0; line < 32 * sizeof(T); line += 64)
    _mm_prefetch((const char*)p + WEIGHT_PREFETCH_BYTES + line, _MM_HINT_T1);
}
#endif  // HERD_PACKED

template <int MT, typename T>
static inline void dot_row(const T* x, int64_t K, const T* w, float* out) {
#if defined(HERD_AVX512)
  __m512 a[MT], b[MT];
  for (int m = 0; m < MT; m++) a[m] = b[m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_weights(w + k);
    const __m512 w0 = widen(0xffff, w + k), w1 = widen(0xffff, w + k + 16);
    for (int m = 0; m < MT; m++) {
      a[m] = _mm512_fmadd_ps(w0, widen(0xffff, x + m * K + k), a[m]);
      b[m] = _mm512_fmadd_ps(w1, widen(0xffff, x + m * K + k + 16), b[m]);
    }
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xffff : (1u << (K - k)) - 1;
    const __m512 wv = widen(mask, w + k);
    for (int m = 0; m < MT; m++) a[m] = _mm512_fmadd_ps(wv, widen(mask, x + m * K + k), a[m]);
  }
  for (int m = 0; m < MT; m++) out[m] = _mm512_reduce_add_ps(_mm512_add_ps(a[m], b[m]));
#else
  for (int m = 0; m < MT; m++) {  // portable: the compiler vectorises the reduction (omp simd)
    float s = 0.f;
    const T* xm = x + m * K;
#pragma omp simd reduction(+ : s)
    for (int64_t k = 0; k < K; k++) s += to_f(xm[k]) * to_f(w[k]);
    out[m] = s;
  }
#endif
}

// bf16 batches of 2+ with AVX512-BF16: a weight row against up to 8 batch rows per register
// tile, bf16 pairs dotted in place (no widening of x or w), so one weight load serves 8 batch
// rows; widen+FMA was instruction bound there (1 thread: batch 2/4/8/16 1.3/1.5/1.7/1.8x faster).
#if defined(HERD_AVX512) && defined(__AVX512BF16__)
#define HERD_BF16_TILES 1
static inline __m512bh bh(__mmask32 mask, const uint16_t* p) {
  return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
}

template <int NR, int MR>
static inline void dot_tile(const uint16_t* x, int64_t K, const uint16_t* w, float* out) {
  // One loop with the tail's mask in it: a separate tail step (acc passed to a second call site)
  // made GCC keep the accumulators on the stack whenever K is not a compile-time constant.
  __m512 acc[NR][MR];
#pragma GCC unroll 8
  for (int n = 0; n < NR; n++)
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) acc[n][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? 0xffffffffu : (1u << (K - k)) - 1;
    __m512bh wv[NR];
#pragma GCC unroll 8
    for (int n = 0; n < NR; n++) {
      prefetch_weights(w + n * K + k);
      wv[n] = bh(mask, w + n * K + k);
    }
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) {
      const __m512bh xv = bh(mask, x + m * K + k);
#pragma GCC unroll 8
      for (int n = 0; n < NR; n++) acc[n][m] = _mm512_dpbf16_ps(acc[n][m], xv, wv[n]);
    }
  }
#pragma GCC unroll 8
  for (int n = 0; n < NR; n++)
#pragma GCC unroll 8
    for (int m = 0; m < MR; m++) out[n * MR + m] = _mm512_reduce_add_ps(acc[n][m]);
}

template <int NR, int MR, typename O>  // rows [n, n + NR) x batch rows [m0, m0 + MR) into out
static inline void tile(const uint16_t* x, int64_t m0, const uint16_t* w, const uint16_t* bias,
                        int64_t K, int64_t n, O* out, int64_t ldo) {
  float acc[NR * MR];
  dot_tile<NR, MR>(x + m0 * K, K, w + n * K, acc);
  for (int r = 0; r < NR; r++) {
    const float b = bias ? to_f(bias[n + r]) : 0.f;
    for (int m = 0; m < MR; m++)
      put(rnd<uint16_t>(acc[r * MR + m] + b), out + (m0 + m) * ldo + n + r);
  }
}

template <int NR, typename O>
static inline void tile_m(const uint16_t* x, int64_t m0, int64_t mt, const uint16_t* w,
                          const uint16_t* bias, int64_t K, int64_t n, O* out, int64_t ldo) {
  switch (mt) {
    case 8: tile<NR, 8>(x, m0, w, bias, K, n, out, ldo); break;
    case 7: tile<NR, 7>(x, m0, w, bias, K, n, out, ldo); break;
    case 6: tile<NR, 6>(x, m0, w, bias, K, n, out, ldo); break;
    case 5: tile<NR, 5>(x, m0, w, bias, K, n, out, ldo); break;
    case 4: tile<NR, 4>(x, m0, w, bias, K, n, out, ldo); break;
    case 3: tile<NR, 3>(x, m0, w, bias, K, n, out, ldo); break;
    case 2: tile<NR, 2>(x, m0, w, bias, K, n, out, ldo); break;
    default: tile<NR, 1>(x, m0, w, bias, K, n, out, ldo);
  }
}

template <typename O>
static void linear_tiled(const uint16_t* x, int64_t M, const uint16_t* w, const uint16_t* bias,
                         int64_t K, int64_t n0, int64_t n1, O* out, int64_t ldo) {
  // Above 8 batch rows, two weight rows per tile: one x load then serves two dots, and the
  // loads, not the dots, bound a one-row tile (200 MB of rows, 2 threads, batch 16: 20.0 -> 13.4
  // ms; a whole batch-16 step of the ~100M model 17.4-18.6 -> 16.0). Up to 8 the step is bound
  // by the weight stream, which one row a tile reads best (batch 8 in the engine: 9.4 vs 10.3 ms;
  // without the prefetch two rows ran 1.5-2x slower at batch 2-4). MR = 8 keeps 16 accumulators,
  // the weight vectors and x in registers; 4 weight rows spill.
  int64_t n = n0;
  if (M > 8)
    for (; n + 2 <= n1; n += 2)
      for (int64_t m0 = 0; m0 < M; m0 += 8)
        tile_m<2>(x, m0, std::min<int64_t>(8, M - m0), w, bias, K, n, out, ldo);
  for (; n < n1; n++)
    for (int64_t m0 = 0; m0 < M; m0 += 8)
      tile_m<1>(x, m0, std::min<int64_t>(8, M - m0), w, bias, K, n, out, ldo);
}

#endif  // HERD_BF16_TILES

// ---- weights packed for a broadcast kernel (what oneDNN's microkernels do) ---------------------
// A packed [N, K] matrix is ceil(N / 32) blocks of 32 outputs; a block holds, for each input unit
// (bf16: an input pair (2k, 2k + 1); float32: one input), its 32 outputs' weights for that unit
// (32 bits each): [N/32][units][32], zero-padded. A tile keeps 2 x 16 outputs of up to 11 batch
// rows in 22 accumulators and per unit broadcasts each row's x unit against the block's two
// vectors: no horizontal sums, no x vector loads, each block one sequential stream. Harness (bf16,
// 200 MB of rows, 2 threads, K = 768, ms, the row tiles above / packed): batch 1 6.5 / 5.6, 8
// 10.8 / 5.8, 16 14.5 / 8.2, 24 21.4 / 12.3, 32 29.0 / 16.0 (~400 GFLOP/s: the vdpbf16ps rate).
#if defined(HERD_PACKED)
template <typename T>
static inline int64_t pack_units(int64_t K) { return sizeof(T) == 2 ? (K + 1) / 2 : K; }

#if !defined(HERD_BF16_TILES)
// Without bf16 dot products (AVX2, AVX-512 without AVX512-BF16) a tile splits each bf16 pair
// into its two inputs' float32 weights (a shift and a mask) and takes two FMAs, from x rows
// widened to float32 once a call. Widening each block once instead, for all the row groups that
// read it, was slower on AVX2: the float32 copy doubles what the tiles read from L2 (2 threads,
// 64 rows: ~80 vs ~120 GFLOP/s).
#define HERD_WIDENS_BF16 1

// The rows a tile broadcasts from: float32 rows as they are; bf16 rows widened into this
// thread's buffer, each padded to whole units (an odd K's pad is 0, as its weight is).
static inline const float* tile_rows(const float* x, int64_t, int64_t K, int64_t& ldx) {
  ldx = K;
  return x;
}
static inline const float* tile_rows(const uint16_t* x, int64_t M, int64_t K, int64_t& ldx) {
  thread_local std::vector<float> rows;
  ldx = 2 * pack_units<uint16_t>(K);
  rows.resize(M * ldx);
  for (int64_t m = 0; m < M; m++) {
    float* r = rows.data() + m * ldx;
#pragma omp simd
    for (int64_t k = 0; k < K; k++) r[k] = to_f(x[m * K + k]);
    if (K % 2) r[K] = 0.f;
  }
  return rows.data();
}
#endif
#endif

#if defined(HERD_AVX512)
// acc += a block's products over every unit, each row's x unit broadcast as it is: a float, or a
// bf16 pair dotted by AVX512-BF16. The broadcast is straight from memory (a load, not a
// vector-ALU move from a general register, which competed with the dot products: bf16 prefill
// shapes ran at ~320 of the ~430 GFLOP/s oneDNN reaches); an odd K's last bf16 pair is a
// zero-padded half, apart.
template <int MR, typename T>
static inline void packed_units(const T* x, int64_t ldx, int64_t K, const uint32_t* w,
                                __m512 (&acc)[MR][2]) {
  auto step = [&](const uint32_t* wk, auto unit_at) {
    _mm_prefetch((const char*)wk + WEIGHT_PREFETCH_BYTES, _MM_HINT_T1);
    _mm_prefetch((const char*)wk + WEIGHT_PREFETCH_BYTES + 64, _MM_HINT_T1);
    const __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 16);
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      const __m512i xb = unit_at(x + m * ldx);
      if constexpr (sizeof(T) == 4) {
        acc[m][0] = _mm512_fmadd_ps(_mm512_castsi512_ps(xb), _mm512_castsi512_ps(w0), acc[m][0]);
        acc[m][1] = _mm512_fmadd_ps(_mm512_castsi512_ps(xb), _mm512_castsi512_ps(w1), acc[m][1]);
      } else {
#if defined(HERD_BF16_TILES)
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)xb, (__m512bh)w0);
        acc[m][1] = _mm512_dpbf16_ps(acc[m][1], (__m512bh)xb, (__m512bh)w1);
#endif
      }
    }
  };
  const int64_t U = pack_units<T>(K), whole = sizeof(T) == 2 ? K / 2 : K;
  for (int64_t u = 0; u < whole; u++)
    step(w + u * PACK_COLS, [u](const T* xm) {
      int32_t bits;  // a float, or a bf16 pair
      std::memcpy(&bits, xm + u * (4 / sizeof(T)), 4);
      return _mm512_set1_epi32(bits);
    });
  if constexpr (sizeof(T) == 2)
    if (whole < U)
      step(w + whole * PACK_COLS, [K](const T* xm) { return _mm512_set1_epi32(xm[K - 1]); });
}

#if defined(HERD_WIDENS_BF16)
// acc += a bf16 block's products over every unit, x from float32 rows (tile_rows): 4 weight
// vectors a unit, each row's two inputs broadcast from memory into its FMAs.
template <int MR>
static inline void widened_units(const float* x, int64_t ldx, int64_t K, const uint32_t* w,
                                 __m512 (&acc)[MR][2]) {
  for (int64_t u = 0; u < pack_units<uint16_t>(K); u++) {
    const uint32_t* wk = w + u * PACK_COLS;
    _mm_prefetch((const char*)wk + WEIGHT_PREFETCH_BYTES, _MM_HINT_T1);
    _mm_prefetch((const char*)wk + WEIGHT_PREFETCH_BYTES + 64, _MM_HINT_T1);
    __m512 lo[2], hi[2];  // inputs 2u's and 2u + 1's weights
    for (int v = 0; v < 2; v++) {
      const __m512i pair = _mm512_loadu_si512(wk + 16 * v);
      lo[v] = _mm512_castsi512_ps(_mm512_slli_epi32(pair, 16));
      hi[v] = _mm512_castsi512_ps(_mm512_and_si512(pair, _mm512_set1_epi32(-65536)));
    }
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++) {
      const float* xm = x + m * ldx + 2 * u;
      for (int v = 0; v < 2; v++)
        acc[m][v] = _mm512_fmadd_ps(_mm512_set1_ps(xm[1]), hi[v],
                                    _mm512_fmadd_ps(_mm512_set1_ps(xm[0]), lo[v], acc[m][v]));
    }
  }
}
#endif

template <int MR, typename T, typename X, typename O>  // X: T, or float rows of bf16 (tile_rows)
static inline void packed_tile(const X* x, int64_t ldx, int64_t K, const uint32_t* w,
                               const T* bias, int64_t col, int64_t N, O* out, int64_t ldo) {
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int m = 0; m < MR; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
  if constexpr (!std::is_same_v<T, X>) {
#if defined(HERD_WIDENS_BF16)
    widened_units<MR>(x, ldx, K, w, acc);
#endif
  } else {
    packed_units<MR, T>(x, ldx, K, w, acc);
  }
  for (int v = 0; v < 2; v++) {
    const int64_t c = col + 16 * v;
    if (c >= N) break;
    const __mmask16 mask = first(N - c);
    const __m512 b = bias ? load16(bias + c, mask) : _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int m = 0; m < MR; m++)
      store16(out + m * ldo + c, vrnd<T>(_mm512_add_ps(acc[m][v], b)), mask);
  }
}
#elif defined(HERD_AVX2)
// 8 lanes, x broadcast from float32 rows (bf16 pairs split as HERD_WIDENS_BF16 says). Up to 2 rows a tile takes a block's 32 outputs in one pass (4 vectors a
// row): small batches are bound by the weight stream, which one pass reads best (float32 batch
// 1 in halves: 19 vs 13 ms a step of the ~100M model). More rows take the block in two halves
// of 16 outputs, each a tile of up to 6 rows x 2 vectors (12 accumulators of 16 registers).
template <int MR, typename T, typename O>
static inline void packed_tile(const float* x, int64_t ldx, int64_t K, const uint32_t* w,
                               const T* bias, int64_t col, int64_t N, O* out, int64_t ldo) {
  constexpr int V = MR <= 2 ? 4 : 2;  // vectors of 8 outputs a pass
  const int64_t U = pack_units<T>(K);
  for (int64_t c0 = col; c0 < std::min(N, col + PACK_COLS); c0 += 8 * V) {
    const uint32_t* wc = w + (c0 - col);
    __m256 acc[MR][V];
#pragma GCC unroll 6
    for (int m = 0; m < MR; m++)
      for (int v = 0; v < V; v++) acc[m][v] = _mm256_setzero_ps();
    for (int64_t u = 0; u < U; u++) {
      const uint32_t* wk = wc + u * PACK_COLS;
      for (int line = 0; line < V / 2; line++)
        _mm_prefetch((const char*)(wk + 16 * line) + WEIGHT_PREFETCH_BYTES, _MM_HINT_T1);
      if constexpr (sizeof(T) == 4) {
        __m256 wv[V];
        for (int v = 0; v < V; v++) wv[v] = _mm256_loadu_ps((const float*)wk + 8 * v);
#pragma GCC unroll 6
        for (int m = 0; m < MR; m++) {
          const __m256 xb = _mm256_broadcast_ss(x + m * ldx + u);
          for (int v = 0; v < V; v++) acc[m][v] = _mm256_fmadd_ps(xb, wv[v], acc[m][v]);
        }
      } else {
        __m256 lo[V], hi[V];  // inputs 2u's and 2u + 1's weights
        for (int v = 0; v < V; v++) {
          const __m256i pair = _mm256_loadu_si256((const __m256i*)(wk + 8 * v));
          lo[v] = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
          hi[v] = _mm256_castsi256_ps(_mm256_and_si256(pair, _mm256_set1_epi32(-65536)));
        }
#pragma GCC unroll 6
        for (int m = 0; m < MR; m++) {
          const __m256 x0 = _mm256_broadcast_ss(x + m * ldx + 2 * u);
          const __m256 x1 = _mm256_broadcast_ss(x + m * ldx + 2 * u + 1);
          for (int v = 0; v < V; v++)
            acc[m][v] = _mm256_fmadd_ps(x1, hi[v], _mm256_fmadd_ps(x0, lo[v], acc[m][v]));
        }
      }
    }
    for (int v = 0; v < V; v++) {
      const int64_t c = c0 + 8 * v;
      if (c >= N) break;
      const __m256 b = bias ? load8(bias + c, N - c) : _mm256_setzero_ps();
#pragma GCC unroll 6
      for (int m = 0; m < MR; m++)
        store8(out + m * ldo + c, vrnd8<T>(_mm256_add_ps(acc[m][v], b)), N - c);
    }
  }
}

#endif

#if defined(HERD_PACKED)
// Output blocks [b0, b1) of a packed matrix for M batch rows, in near-equal groups of at most
// pack_rows<T>().
template <typename T, typename O>
static void packed_linear(const T* x, int64_t M, const uint32_t* wp, const T* bias, int64_t K,
                          int64_t N, int64_t b0, int64_t b1, O* out, int64_t ldo) {
  constexpr int64_t most = pack_rows<T>();
  const int64_t groups = (M + most - 1) / most, U = pack_units<T>(K);
#if defined(HERD_WIDENS_BF16)
  int64_t ldx;
  const float* rows = tile_rows(x, M, K, ldx);
#else
  const T* rows = x;
  const int64_t ldx = K;
#endif
  for (int64_t nb = b0; nb < b1; nb++) {
    const uint32_t* w = wp + nb * U * PACK_COLS;
    for (int64_t g = 0, m0 = 0; g < groups; g++) {
      const int64_t mt = M / groups + (g < M % groups), col = nb * PACK_COLS;
      const auto* xm = rows + m0 * ldx;
      O* o = out + m0 * ldo;
      switch (mt) {
#define HERD_PACKED_CASE(R) \
  case R:                   \
    if constexpr (R <= most) packed_tile<R, T>(xm, ldx, K, w, bias, col, N, o, ldo); \
    break;
        HERD_PACKED_CASE(11) HERD_PACKED_CASE(10) HERD_PACKED_CASE(9)
        HERD_PACKED_CASE(8) HERD_PACKED_CASE(7) HERD_PACKED_CASE(6) HERD_PACKED_CASE(5)
        HERD_PACKED_CASE(4) HERD_PACKED_CASE(3) HERD_PACKED_CASE(2)
#undef HERD_PACKED_CASE
        default: packed_tile<1, T>(xm, ldx, K, w, bias, col, N, o, ldo);
      }
      m0 += mt;
    }
  }
}
#endif

template <typename T, typename O>
static void linear(const T* x, int64_t M, const void* w, const void* bias, int64_t K, int64_t n0,
                   int64_t n1, O* out, int64_t ldo) {
  const T *wt = (const T*)w, *bt = (const T*)bias;
#if defined(HERD_BF16_TILES)
  if constexpr (std::is_same_v<T, uint16_t>)
    if (M > 1) return linear_tiled(x, M, wt, bt, K, n0, n1, out, ldo);
#endif
  float acc[4];
  for (int64_t n = n0; n < n1; n++)
    for (int64_t m0 = 0; m0 < M; m0 += 4) {  // the row stays in L1 for every 4 batch rows
      const int64_t mt = std::min<int64_t>(4, M - m0);
      const T *xm = x + m0 * K, *wn = wt + n * K;
      switch (mt) {
        case 4: dot_row<4>(xm, K, wn, acc); break;
        case 3: dot_row<3>(xm, K, wn, acc); break;
        case 2: dot_row<2>(xm, K, wn, acc); break;
        default: dot_row<1>(xm, K, wn, acc);
      }
      const float b = bt ? to_f(bt[n]) : 0.f;
      for (int64_t m = 0; m < mt; m++) put(rnd<T>(acc[m] + b), out + (m0 + m) * ldo + n);
    }
}
