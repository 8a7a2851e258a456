// Paged prefill attention for CPUs (herd.engine.cpu_paged_prefill builds and loads this file).
// Every prefill chunk of a step in one call. Chunk s has ql query tokens, the positions ctx-ql ..
// ctx-1 of its sequence, each attending causally to the sequence's cached tokens 0 .. position,
// read through its block table: the chunk's own K/V are stored before the call, so a first chunk,
// a chunk after a prefix-cache hit and a later chunk of a long prompt are read the same way.
// A task is one (chunk, KV head, block of query tokens). Its query rows (token-major, the G query
// heads of the KV head each) lie across the 16 lanes of a vector, so the online softmax (flash
// attention's running max and sum per row) is lane-wise arithmetic, without horizontal sums, and a
// key is read from the cache once per task and broadcast to every row. Scores: with AVX512-BF16
// (and an even head_dim) bf16 query pairs dotted with the key's pairs in place, float32 sums; else
// float32 FMAs on the widened query. Weighted values: float32 FMAs, each value row widened once per
// tile of keys. Probabilities stay float32 (torch's CPU flash kernel rounds them to bf16).
// AVX-512 only: without it the library has no symbols and the caller keeps SDPA.
// Measured on a 2-core Zen 4 (bf16, 12 heads, 4 KV heads, head_dim 64): see RESULTS.md.
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

  // The queries transposed (lane = row): bf16 pairs as 32-bit words, or scaled floats.
  void load_queries() {
    w_.qt.assign(NRV_ * Dq_ * 16, 0.f);
    w_.pos.assign(NRV_ * 16, -1);  // padding lanes attend to nothing
    w_.m.assign(NRV_ * 16, -1e30f);
    w_.l.assign(NRV_ * 16, 0.f);
    w_.ot.assign(NRV_ * Dp_ * 16, 0.f);
    w_.sc.resize(KT * NRV_ * 16);
    w_.vf.assign(KT * Dp_, 0.f);
    for (int64_t r = 0; r < R_; r++) {
      const T* qr = query(r);
      float* col = w_.qt.data() + (r / 16) * Dq_ * 16 + r % 16;
      w_.pos[r] = (int32_t)(first_pos_ + t_.i0 + r / G_);
      if (dot_)
        for (int64_t c = 0; c < Dq_; c++) std::memcpy(col + c * 16, qr + 2 * c, 4);
      else
        for (int64_t d = 0; d < Dq_; d++) col[d * 16] = to_f(qr[d]) * a_.scale;
    }
  }

  // sc[j][rv] = the 16 rows' scores of key j0 + j, four keys at a time (independent sums).
  void scores(int64_t j0, int64_t nt) {
    const float post = dot_ ? a_.scale : 1.f;
    for (int64_t j = 0; j < nt; j += 4) {
      const T* kp[4];
      for (int u = 0; u < 4; u++) kp[u] = key(j0 + std::min<int64_t>(j + u, nt - 1));
      for (int64_t rv = 0; rv < NRV_; rv++) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        dot4(rv, kp, acc);
        for (int u = 0; u < 4 && j + u < nt; u++)
          _mm512_storeu_ps(&w_.sc[((j + u) * NRV_ + rv) * 16], _mm512_mul_ps(acc[u], _mm512_set1_ps(post)));
      }
    }
  }

  void dot4(int64_t rv, const T* const* kp, __m512* acc) const {
    const float* qt = w_.qt.data() + rv * Dq_ * 16;
#ifdef HERD_PREFILL_BF16_DOT
    if constexpr (std::is_same_v<T, uint16_t>)
      if (dot_) {
#pragma GCC unroll 4
        for (int64_t c = 0; c < Dq_; c++) {
          const __m512bh x = (__m512bh)_mm512_loadu_ps(qt + c * 16);
          for (int u = 0; u < 4; u++) {
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
      for (int u = 0; u < 4; u++) acc[u] = _mm512_fmadd_ps(x, _mm512_set1_ps(to_f(kp[u][d])), acc[u]);
    }
  }

  // Online softmax over the tile: masked scores (key past the row's position) become zero
  // probabilities; the running max, sum and accumulated values are rescaled lane by lane.
  void softmax(int64_t j0, int64_t nt) {
    for (int64_t rv = 0; rv < NRV_; rv++) {
      const __m512i pos = _mm512_loadu_si512(&w_.pos[rv * 16]);
      const __m512 m = _mm512_loadu_ps(&w_.m[rv * 16]);
      __m512 mt = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < nt; j++) {
        const __mmask16 ok = _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32((int32_t)(j0 + j)));
        mt = _mm512_mask_max_ps(mt, ok, mt, _mm512_loadu_ps(&w_.sc[(j * NRV_ + rv) * 16]));
      }
      const __m512 mn = _mm512_max_ps(m, mt), alpha = exp16(_mm512_sub_ps(m, mn));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nt; j++) {
        float* s = &w_.sc[(j * NRV_ + rv) * 16];
        const __mmask16 ok = _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32((int32_t)(j0 + j)));
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

  void store() const {
    for (int64_t r = 0; r < R_; r++) {
      const float* col = w_.ot.data() + (r / 16) * Dp_ * 16 + r % 16;
      const float l = w_.l[r];
      T* o = a_.out + (q0_ + t_.i0 + r / G_) * a_.out_stride + (t_.h * G_ + r % G_) * a_.D;
      for (int64_t d = 0; d < a_.D; d++) put(col[d * 16] / l, o + d);
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
