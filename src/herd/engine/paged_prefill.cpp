// Paged prefill attention for CPUs (herd.engine.cpu_paged_prefill builds and loads this file).
// Every prefill chunk of a step in one call. Chunk s has ql query tokens, the positions ctx-ql ..
// ctx-1 of its sequence, each attending causally to the sequence's cached tokens 0 .. position,
// read through its block table: the chunk's own K/V are stored before the call, so a first chunk,
// a chunk after a prefix-cache hit and a later chunk of a long prompt are read the same way.
// A task is one (chunk, KV head, block of query tokens). Its query rows (token-major, the G query
// heads of the KV head each) lie across the lanes of a vector, so the online softmax (flash
// attention's running max and sum per row) is lane-wise arithmetic, without horizontal sums, and a
// key is read from the cache once per task and broadcast to every row. With AVX512-BF16 both
// products run on bf16 pairs with float32 sums: scores dot query pairs with the key's pairs
// (an even head_dim), weighted values dot the probabilities of two keys, rounded to bf16 as
// torch's CPU flash kernel rounds them, with those keys' values of one column. Otherwise float32
// FMAs on widened values. Queries and outputs are transposed N x N in registers. Written once over
// cpu_simd.h's vec (N = 16 lanes with AVX-512, 8 with AVX2); without either the library has no
// symbols and the caller keeps SDPA.
// Measured on a 2-core Zen 4 (bf16, 12 heads over 4 KV heads, head_dim 64), ms a layer, SDPA vs
// this: 16 chunks of 128 tokens 8.9 vs 2.4; 4 of 512 24.5 vs 7.1; one of 2048 57.4 vs 24.8;
// 2048 after a 2048-token prefix 193 vs 72 (~260 GFLOP/s). Built for AVX2 (emulated there):
// 16 x 128 11.6 vs 6.1 (float32 11.6 vs 8.4), one of 2048 74.7 vs 67.9 (65.9 vs 63.4): each
// broadcast is its own load there, and FMAs cannot take it from memory as AVX-512's do.
#include "cpu_simd.h"

#ifdef HERD_VEC
#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#define HERD_PREFILL_BF16_DOT 1
#endif

namespace {

constexpr int64_t KT = 32;        // keys per tile: one softmax update
constexpr int KU = 8;             // keys whose scores are summed side by side
constexpr int64_t ROWS = 64;      // query rows (tokens x G) a task aims for: 4 (AVX2: 8) vectors
constexpr int64_t N = vec::N;     // lanes: query rows a vector holds, columns a values pass
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
  std::vector<float> qt, sc, kf, vf, ot, m, l;
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
      : a_(a), t_(t), w_(w), G_(a.Hq / a.Hkv), R_(t.n * G_), NRV_((R_ + N - 1) / N),
        Dp_((a.D + N - 1) / N * N), dot_(dot_path<T>() && a.D % 2 == 0),
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
  // bf16 scores are scaled once summed, as torch's flash kernel scales them (float32 queries
  // are scaled as they are loaded)
  float pre_scale() const { return std::is_same_v<T, uint16_t> ? 1.f : a_.scale; }
  const T* query(int64_t r) const {  // lane r: token r / G, head r % G of the group
    return a_.q + (q0_ + t_.i0 + r / G_) * a_.q_stride + (t_.h * G_ + r % G_) * a_.D;
  }

  // The queries transposed (lane = row), N x N at a time: bf16 pairs as 32-bit words, or
  // scaled floats.
  void load_queries() {
    w_.qt.resize(NRV_ * Dq_ * N + KT / 2 * NRV_ * N);  // then the probability pairs
    w_.pos.assign(NRV_ * N, -1);  // padding lanes attend to nothing
    w_.m.assign(NRV_ * N, -1e30f);
    w_.l.assign(NRV_ * N, 0.f);
    w_.ot.assign(NRV_ * Dp_ * N, 0.f);
    w_.sc.resize(KT * NRV_ * N);
    w_.vf.assign(KT * Dp_, 0.f);
    for (int64_t r = 0; r < R_; r++) w_.pos[r] = (int32_t)(first_pos_ + t_.i0 + r / G_);
    for (int64_t rv = 0; rv < NRV_; rv++)
      for (int64_t c0 = 0; c0 < Dq_; c0 += N) {
        vec::F v[N];
        for (int64_t i = 0; i < N; i++) {
          const int64_t r = rv * N + i;
          if (r >= R_) v[i] = vec::zero();
#ifdef HERD_PREFILL_BF16_DOT
          else if (dot_) v[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(first(Dq_ - c0), query(r) + 2 * c0));
#endif
          else v[i] = vec::mul(vec::load_first(query(r) + c0, Dq_ - c0), vec::set(pre_scale()));
        }
        vec::transpose(v);
        for (int64_t k = 0; k < N && c0 + k < Dq_; k++) vec::store(&w_.qt[(rv * Dq_ + c0 + k) * N], v[k]);
      }
  }

  // sc[j][rv] = the N rows' scores of key j0 + j, KU keys at a time: KU independent sums keep
  // the multiply-add pipe busy (four: 11% slower at 2048 tokens, each sum waiting on its last add).
  // Without the bf16 dot product, bf16 keys are widened once a tile into kf rather than once a
  // row vector (AVX2, bf16, one chunk of 2048 tokens: 74 -> 68 ms a layer).
  void scores(int64_t j0, int64_t nt) {
    if constexpr (std::is_same_v<T, uint16_t>)
      if (!dot_) {
        w_.kf.resize(KT * a_.D);
        for (int64_t j = 0; j < nt; j++) {
          const T* k = key(j0 + j);
          for (int64_t d = 0; d < a_.D; d++) w_.kf[j * a_.D + d] = to_f(k[d]);
        }
        return scores_of(nt, [&](int64_t j) { return w_.kf.data() + j * a_.D; });
      }
    scores_of(nt, [&](int64_t j) { return key(j0 + j); });
  }

  template <typename KeyAt>
  void scores_of(int64_t nt, KeyAt key_at) {
    const float post = a_.scale / pre_scale();
    for (int64_t j = 0; j < nt; j += KU) {
      decltype(key_at(0)) kp[KU];
      for (int u = 0; u < KU; u++) kp[u] = key_at(std::min<int64_t>(j + u, nt - 1));
      for (int64_t rv = 0; rv < NRV_; rv++) {
        vec::F acc[KU];
        for (int u = 0; u < KU; u++) acc[u] = vec::zero();
        dots(rv, kp, acc);
        for (int u = 0; u < KU && j + u < nt; u++)
          vec::store(&w_.sc[((j + u) * NRV_ + rv) * N], vec::mul(acc[u], vec::set(post)));
      }
    }
  }

  template <typename K>
  void dots(int64_t rv, const K* const* kp, vec::F* acc) const {
    const float* qt = w_.qt.data() + rv * Dq_ * N;
#ifdef HERD_PREFILL_BF16_DOT
    if constexpr (std::is_same_v<K, uint16_t>)
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
      const vec::F x = vec::load(qt + d * N);
      for (int u = 0; u < KU; u++) acc[u] = vec::fma(x, vec::set(to_f(kp[u][d])), acc[u]);
    }
  }

  // Online softmax over the tile: masked scores (key past the row's position) become zero
  // probabilities; the running max, sum and accumulated values are rescaled lane by lane.
  void softmax(int64_t j0, int64_t nt) {
    // Below the diagonal every row sees every key of the tile: no masks (padding lanes then
    // carry finite garbage, never stored).
    const bool full = j0 + nt - 1 <= first_pos_ + t_.i0;
    for (int64_t rv = 0; rv < NRV_; rv++) {
      const int32_t* pos = &w_.pos[rv * N];
      const vec::F m = vec::load(&w_.m[rv * N]);
      vec::F mt = vec::set(-INFINITY);
      for (int64_t j = 0; j < nt; j++) {
        const vec::M ok = full ? vec::all() : vec::at_least(pos, (int32_t)(j0 + j));
        mt = vec::max_where(ok, mt, vec::load(&w_.sc[(j * NRV_ + rv) * N]));
      }
      const vec::F mn = vec::max(m, mt), alpha = vec::exp(vec::sub(m, mn));
      vec::F sum = vec::zero();
      for (int64_t j = 0; j < nt; j++) {
        float* s = &w_.sc[(j * NRV_ + rv) * N];
        const vec::M ok = full ? vec::all() : vec::at_least(pos, (int32_t)(j0 + j));
        const vec::F p = vec::zero_unless(ok, vec::exp(vec::sub(vec::load(s), mn)));
        vec::store(s, dot_ ? p : vec::rnd<T>(p));  // bf16 probabilities rounded as torch rounds
        sum = vec::add(sum, p);                    // them for its product with the values
      }
      vec::store(&w_.m[rv * N], mn);
      vec::store(&w_.l[rv * N], vec::fma(vec::load(&w_.l[rv * N]), alpha, sum));
      float* ot = w_.ot.data() + rv * Dp_ * N;
      for (int64_t d = 0; d < Dp_; d++) vec::store(ot + d * N, vec::mul(vec::load(ot + d * N), alpha));
    }
  }

  // ot[rv][d] += sum over the tile's keys of p[key][rv] * v[key][d], N columns in registers.
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
      for (int64_t d0 = 0; d0 < Dp_; d0 += N) {
        float* ot = w_.ot.data() + (rv * Dp_ + d0) * N;
        vec::F acc[N];
        for (int dd = 0; dd < N; dd++) acc[dd] = vec::load(ot + dd * N);
        for (int64_t j = 0; j < nt; j++) {
          const vec::F p = vec::load(&w_.sc[(j * NRV_ + rv) * N]);
          const float* vf = w_.vf.data() + j * Dp_ + d0;
          for (int dd = 0; dd < N; dd++) acc[dd] = vec::fma(p, vec::set(vf[dd]), acc[dd]);
        }
        for (int dd = 0; dd < N; dd++) vec::store(ot + dd * N, acc[dd]);
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

  // Each row's accumulated values over its sum, transposed back to rows N x N at a time.
  void store() const {
    for (int64_t rv = 0; rv < NRV_; rv++) {
      const vec::F inv = vec::div(vec::set(1.f), vec::load(&w_.l[rv * N]));
      for (int64_t d0 = 0; d0 < a_.D; d0 += N) {
        vec::F v[N];
        for (int k = 0; k < N; k++) v[k] = vec::mul(vec::load(&w_.ot[(rv * Dp_ + d0 + k) * N]), inv);
        vec::transpose(v);
        for (int64_t i = 0; i < N && rv * N + i < R_; i++) {
          const int64_t r = rv * N + i;
          T* o = a_.out + (q0_ + t_.i0 + r / G_) * a_.out_stride + (t_.h * G_ + r % G_) * a_.D;
          vec::store_first(o + d0, v[i], a_.D - d0);
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
