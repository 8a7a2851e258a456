// Paged prefill attention for CPUs (herd.engine.cpu_paged_prefill builds and loads this file).
// Every prefill chunk of a step in one call. Chunk s has ql query tokens, the positions ctx-ql ..
// ctx-1 of its sequence, each attending causally to the sequence's cached tokens 0 .. position,
// read through its block table: the chunk's own K/V are stored before the call, so a first chunk,
// a chunk after a prefix-cache hit and a later chunk of a long prompt are read the same way.
// A task is one (chunk, KV head, block of query tokens). Its query rows (token-major, the G query
// heads of the KV head each) lie across the 16 lanes of a vector, so the online softmax (flash
// attention's running max and sum per row) is lane-wise arithmetic, without horizontal sums, and a
// key is read from the cache once per task and broadcast to every row. With AVX512-BF16 both
// products run on bf16 pairs with float32 sums: scores dot query pairs with the key's pairs
// (an even head_dim), weighted values dot the probabilities of two keys, rounded to bf16 as
// torch's CPU flash kernel rounds them, with those keys' values of one column. Otherwise float32
// FMAs on widened values. Queries and outputs are transposed 16 x 16 in registers.
// AVX-512 only: without it the library has no symbols and the caller keeps SDPA.
// Measured on a 2-core Zen 4 (bf16, 12 heads over 4 KV heads, head_dim 64), ms a layer, SDPA vs
// this: 16 chunks of 128 tokens 8.9 vs 2.4; 4 of 512 24.5 vs 7.1; one of 2048 57.4 vs 24.8;
// 2048 after a 2048-token prefix 193 vs 72 (~260 GFLOP/s).
#include "cpu_simd.h"

#ifdef HERD_AVX512
#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#define HERD_PREFILL_BF16_DOT 1
#endif

namespace {

constexpr int64_t KT = 32;        // keys per tile: one softmax update
constexpr int KU = 8;             // keys whose scores are summed side by side
constexpr int64_t ROWS = 64;      // query rows (tokens x G) a task aims for: four vectors
constexpr int64_t NCHUNK = 4;     // per chunk: first token in q, query tokens, context, table offset

template <typename T>
struct Args {
  const T* q;
  int64_t q_stride;  // elements between tokens; a token's Hq heads are contiguous
  const T* kc;
  const T* vc;  // [num_blocks, bs, Hkv, D]
  const int64_t* tables;  // every chunk's block ids, one after another
  const int64_t* chunks;  // [S, NCHUNK]
  T* out;
  int64_t out_stride;
  int64_t Hq, Hkv, D, bs;
  float scale;
};

struct Task {
  int64_t s, h, i0, n;  // chunk, KV head, first query token in the chunk, tokens
  int64_t last;         // the last key it reads (for ordering: longest first)
};

// Scratch of one thread, reused by its tasks.
struct Scratch {
  std::vector<float> qt, sc, vf, ot, m, l;
  std::vector<int32_t> pos;
};

template <typename T>
constexpr bool dot_path() {
#ifdef HERD_PREFILL_BF16_DOT
  return std::is_same_v<T, uint16_t>;
#else
  return false;
#endif
}

// v[i] lane j <- v[j] lane i: sixteen vectors of 16 32-bit lanes transposed in registers.
inline void transpose16(__m512* v) {
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

template <typename T>
class PrefillTask {
 public:
  PrefillTask(const Args<T>& a, const Task& t, Scratch& w)
      : a_(a), t_(t), w_(w), G_(a.Hq / a.Hkv), R_(t.n * G_), NRV_((R_ + 15) / 16),
        Dp_((a.D + 15) / 16 * 16), dot_(dot_path<T>() && a.D % 2 == 0),
        Dq_(dot_ ? a.D / 2 : a.D) {
    const int64_t* c = a.chunks + t.s * NCHUNK;
    q0_ = c[0], first_pos_ = c[2] - c[1], table_ = a.tables + c[3];
  }

  void run() {
    load_queries();
    for (int64_t j0 = 0; j0 <= t_.last; j0 += KT) {
      const int64_t nt = std::min(KT, t_.last + 1 - j0);
      scores(j0, nt);
      softmax(j0, nt);
      weighted_values(j0, nt);
    }
    store();
  }

 private:
  const T* key(int64_t j) const { return row(a_.kc, j); }
  const T* row(const T* cache, int64_t j) const {
    return cache + ((table_[j / a_.bs] * a_.bs + j % a_.bs) * a_.Hkv + t_.h) * a_.D;
  }
  const T* query(int64_t r) const {  // lane r: token r / G, head r % G of the group
    return a_.q + (q0_ + t_.i0 + r / G_) * a_.q_stride + (t_.h * G_ + r % G_) * a_.D;
  }

  // The queries transposed (lane = row), 16 x 16 at a time: bf16 pairs as 32-bit words, or
  // scaled floats.
  void load_queries() {
    w_.qt.resize(NRV_ * Dq_ * 16 + KT / 2 * NRV_ * 16);  // then the probability pairs
    w_.pos.assign(NRV_ * 16, -1);  // padding lanes attend to nothing
    w_.m.assign(NRV_ * 16, -1e30f);
    w_.l.assign(NRV_ * 16, 0.f);
    w_.ot.assign(NRV_ * Dp_ * 16, 0.f);
    w_.sc.resize(KT * NRV_ * 16);
    w_.vf.assign(KT * Dp_, 0.f);
    for (int64_t r = 0; r < R_; r++) w_.pos[r] = (int32_t)(first_pos_ + t_.i0 + r / G_);
    for (int64_t rv = 0; rv < NRV_; rv++)
      for (int64_t c0 = 0; c0 < Dq_; c0 += 16) {
        const __mmask16 m = first(Dq_ - c0);
        __m512 v[16];
        for (int64_t i = 0; i < 16; i++) {
          const int64_t r = rv * 16 + i;
          if (r >= R_) v[i] = _mm512_setzero_ps();
          else if (dot_) v[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(m, query(r) + 2 * c0));
          else v[i] = _mm512_mul_ps(load16(query(r) + c0, m), _mm512_set1_ps(a_.scale));
        }
        transpose16(v);
        for (int64_t k = 0; k < 16 && c0 + k < Dq_; k++) _mm512_storeu_ps(&w_.qt[(rv * Dq_ + c0 + k) * 16], v[k]);
      }
  }

  // sc[j][rv] = the 16 rows' scores of key j0 + j, KU keys at a time: KU independent sums keep
  // the multiply-add pipe busy (four: 11% slower at 2048 tokens, each sum waiting on its last add).
  void scores(int64_t j0, int64_t nt) {
    const float post = dot_ ? a_.scale : 1.f;
    for (int64_t j = 0; j < nt; j += KU) {
      const T* kp[KU];
      for (int u = 0; u < KU; u++) kp[u] = key(j0 + std::min<int64_t>(j + u, nt - 1));
      for (int64_t rv = 0; rv < NRV_; rv++) {
        __m512 acc[KU];
        for (int u = 0; u < KU; u++) acc[u] = _mm512_setzero_ps();
        dots(rv, kp, acc);
        for (int u = 0; u < KU && j + u < nt; u++)
          _mm512_storeu_ps(&w_.sc[((j + u) * NRV_ + rv) * 16], _mm512_mul_ps(acc[u], _mm512_set1_ps(post)));
      }
    }
  }

  void dots(int64_t rv, const T* const* kp, __m512* acc) const {
    const float* qt = w_.qt.data() + rv * Dq_ * 16;
#ifdef HERD_PREFILL_BF16_DOT
    if constexpr (std::is_same_v<T, uint16_t>)
      if (dot_) {
#pragma GCC unroll 4
        for (int64_t c = 0; c < Dq_; c++) {
          const __m512bh x = (__m512bh)_mm512_loadu_ps(qt + c * 16);
          for (int u = 0; u < KU; u++) {
            int32_t pair;
            std::memcpy(&pair, kp[u] + 2 * c, 4);
            acc[u] = _mm512_dpbf16_ps(acc[u], x, (__m512bh)_mm512_set1_epi32(pair));
          }
        }
        return;
      }
#endif
#pragma GCC unroll 4
    for (int64_t d = 0; d < Dq_; d++) {
      const __m512 x = _mm512_loadu_ps(qt + d * 16);
      for (int u = 0; u < KU; u++) acc[u] = _mm512_fmadd_ps(x, _mm512_set1_ps(to_f(kp[u][d])), acc[u]);
    }
  }

  // Online softmax over the tile: masked scores (key past the row's position) become zero
  // probabilities; the running max, sum and accumulated values are rescaled lane by lane.
  void softmax(int64_t j0, int64_t nt) {
    // Below the diagonal every row sees every key of the tile: no masks (padding lanes then
    // carry finite garbage, never stored).
    const bool full = j0 + nt - 1 <= first_pos_ + t_.i0;
    for (int64_t rv = 0; rv < NRV_; rv++) {
      const __m512i pos = _mm512_loadu_si512(&w_.pos[rv * 16]);
      const __m512 m = _mm512_loadu_ps(&w_.m[rv * 16]);
      __m512 mt = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < nt; j++) {
        const __mmask16 ok = full ? 0xffff : _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32((int32_t)(j0 + j)));
        mt = _mm512_mask_max_ps(mt, ok, mt, _mm512_loadu_ps(&w_.sc[(j * NRV_ + rv) * 16]));
      }
      const __m512 mn = _mm512_max_ps(m, mt), alpha = exp16(_mm512_sub_ps(m, mn));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nt; j++) {
        float* s = &w_.sc[(j * NRV_ + rv) * 16];
        const __mmask16 ok = full ? 0xffff : _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32((int32_t)(j0 + j)));
        const __m512 p = _mm512_maskz_mov_ps(ok, exp16(_mm512_sub_ps(_mm512_loadu_ps(s), mn)));
        _mm512_storeu_ps(s, p);
        sum = _mm512_add_ps(sum, p);
      }
      _mm512_storeu_ps(&w_.m[rv * 16], mn);
      _mm512_storeu_ps(&w_.l[rv * 16], _mm512_fmadd_ps(_mm512_loadu_ps(&w_.l[rv * 16]), alpha, sum));
      float* ot = w_.ot.data() + rv * Dp_ * 16;
      for (int64_t d = 0; d < Dp_; d++) _mm512_storeu_ps(ot + d * 16, _mm512_mul_ps(_mm512_loadu_ps(ot + d * 16), alpha));
    }
  }

  // ot[rv][d] += sum over the tile's keys of p[key][rv] * v[key][d], 16 columns in registers.
  void weighted_values(int64_t j0, int64_t nt) {
#ifdef HERD_PREFILL_BF16_DOT
    if constexpr (std::is_same_v<T, uint16_t>) return weighted_values_bf16(j0, nt);
#endif
    for (int64_t j = 0; j < nt; j++) {
      const T* v = row(a_.vc, j0 + j);
      float* vf = w_.vf.data() + j * Dp_;
      for (int64_t d = 0; d < a_.D; d++) vf[d] = to_f(v[d]);
    }
    for (int64_t rv = 0; rv < NRV_; rv++)
      for (int64_t d0 = 0; d0 < Dp_; d0 += 16) {
        float* ot = w_.ot.data() + (rv * Dp_ + d0) * 16;
        __m512 acc[16];
        for (int dd = 0; dd < 16; dd++) acc[dd] = _mm512_loadu_ps(ot + dd * 16);
        for (int64_t j = 0; j < nt; j++) {
          const __m512 p = _mm512_loadu_ps(&w_.sc[(j * NRV_ + rv) * 16]);
          const float* vf = w_.vf.data() + j * Dp_ + d0;
          for (int dd = 0; dd < 16; dd++) acc[dd] = _mm512_fmadd_ps(p, _mm512_set1_ps(vf[dd]), acc[dd]);
        }
        for (int dd = 0; dd < 16; dd++) _mm512_storeu_ps(ot + dd * 16, acc[dd]);
      }
  }

#ifdef HERD_PREFILL_BF16_DOT
  // As weighted_values, two keys per instruction: the probabilities of keys 2i and 2i+1 rounded
  // to a bf16 pair per lane (as torch's flash kernel rounds them) and dotted with the pair of
  // their values of one column, broadcast. Half the multiply-adds of the float32 path.
  void weighted_values_bf16(int64_t j0, int64_t nt) {
    const int64_t np = (nt + 1) / 2;
    uint32_t* vp = (uint32_t*)w_.vf.data();  // [pair][Dp] value pairs; columns past D stay 0
    uint32_t* pp = (uint32_t*)w_.qt.data() + NRV_ * Dq_ * 16;  // [pair][rv] probability pairs
    for (int64_t i = 0; i < np; i++) {
      const uint16_t* x = row(a_.vc, j0 + 2 * i);
      const uint16_t* y = 2 * i + 1 < nt ? row(a_.vc, j0 + 2 * i + 1) : nullptr;
      for (int64_t d = 0; d < a_.D; d++) vp[i * Dp_ + d] = x[d] | (y ? (uint32_t)y[d] << 16 : 0u);
      for (int64_t rv = 0; rv < NRV_; rv++) {
        const __m512 p0 = _mm512_loadu_ps(&w_.sc[(2 * i * NRV_ + rv) * 16]);
        const __m512 p1 = y ? _mm512_loadu_ps(&w_.sc[((2 * i + 1) * NRV_ + rv) * 16]) : _mm512_setzero_ps();
        const __m512i lo = _mm512_cvtepu16_epi32(bf16_bits(p0)), hi = _mm512_cvtepu16_epi32(bf16_bits(p1));
        _mm512_storeu_si512(pp + (i * NRV_ + rv) * 16, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
    for (int64_t rv = 0; rv < NRV_; rv++)
      for (int64_t d0 = 0; d0 < Dp_; d0 += 16) {
        float* ot = w_.ot.data() + (rv * Dp_ + d0) * 16;
        __m512 acc[16];
        for (int dd = 0; dd < 16; dd++) acc[dd] = _mm512_loadu_ps(ot + dd * 16);
        for (int64_t i = 0; i < np; i++) {
          const __m512bh p = (__m512bh)_mm512_loadu_si512(pp + (i * NRV_ + rv) * 16);
          const uint32_t* v = vp + i * Dp_ + d0;
          for (int dd = 0; dd < 16; dd++)
            acc[dd] = _mm512_dpbf16_ps(acc[dd], p, (__m512bh)_mm512_set1_epi32((int32_t)v[dd]));
        }
        for (int dd = 0; dd < 16; dd++) _mm512_storeu_ps(ot + dd * 16, acc[dd]);
      }
  }
#endif

  // Each row's accumulated values over its sum, transposed back to rows 16 x 16 at a time.
  void store() const {
    for (int64_t rv = 0; rv < NRV_; rv++) {
      const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_loadu_ps(&w_.l[rv * 16]));
      for (int64_t d0 = 0; d0 < a_.D; d0 += 16) {
        __m512 v[16];
        for (int k = 0; k < 16; k++) v[k] = _mm512_mul_ps(_mm512_loadu_ps(&w_.ot[(rv * Dp_ + d0 + k) * 16]), inv);
        transpose16(v);
        for (int64_t i = 0; i < 16 && rv * 16 + i < R_; i++) {
          const int64_t r = rv * 16 + i;
          T* o = a_.out + (q0_ + t_.i0 + r / G_) * a_.out_stride + (t_.h * G_ + r % G_) * a_.D;
          store16(o + d0, v[i], first(a_.D - d0));
        }
      }
    }
  }

  const Args<T>& a_;
  const Task& t_;
  Scratch& w_;
  const int64_t G_, R_, NRV_, Dp_;
  const bool dot_;
  const int64_t Dq_;
  int64_t q0_, first_pos_;
  const int64_t* table_;
};

// Tasks of every chunk, the longest context first so the last ones to start are the shortest.
std::vector<Task> plan(const int64_t* chunks, int64_t S, int64_t Hkv, int64_t G) {
  const int64_t per = std::max<int64_t>(1, ROWS / G);  // query tokens per task
  std::vector<Task> tasks;
  for (int64_t s = 0; s < S; s++) {
    const int64_t ql = chunks[s * NCHUNK + 1], first = chunks[s * NCHUNK + 2] - ql;
    for (int64_t i0 = 0; i0 < ql; i0 += per)
      for (int64_t h = 0; h < Hkv; h++) {
        const int64_t n = std::min(per, ql - i0);
        tasks.push_back({s, h, i0, n, first + i0 + n - 1});
      }
  }
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) { return x.last > y.last; });
  return tasks;
}

template <typename T>
void prefill(const Args<T>& a, int64_t S, int nthreads) {
  const std::vector<Task> tasks = plan(a.chunks, S, a.Hkv, a.Hq / a.Hkv);
#pragma omp parallel num_threads(nthreads)
  {
    Scratch w;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < tasks.size(); i++) PrefillTask<T>(a, tasks[i], w).run();
  }
}

}  // namespace

#define ENTRY(NAME, T)                                                                             \
  extern "C" void NAME(const void* q, int64_t q_stride, const void* k, const void* v,              \
                       const int64_t* tables, const int64_t* chunks, int64_t S, void* out,         \
                       int64_t out_stride, int64_t Hq, int64_t Hkv, int64_t D, int64_t bs,         \
                       float scale, int nthreads) {                                                \
    const Args<T> a{(const T*)q, q_stride, (const T*)k, (const T*)v, tables, chunks, (T*)out,     \
                    out_stride, Hq, Hkv, D, bs, scale};                                             \
    prefill<T>(a, S, nthreads);                                                                    \
  }
ENTRY(herd_paged_prefill_f32, float)
ENTRY(herd_paged_prefill_bf16, uint16_t)
#endif
