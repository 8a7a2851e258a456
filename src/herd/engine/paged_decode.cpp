// Paged decode attention for CPUs (herd.engine.cpu_paged_decode builds and loads this file).
// One query token per sequence attends to its first lens[b] cached tokens, read through the block
// table: cache [num_blocks, block_size, Hkv, D], q and out [B, Hq, D], GQA groups of G = Hq/Hkv.
// A task takes one sequence and a range of KV heads; it walks the context token by token, so a
// token's heads are read together (contiguous), and later tokens are prefetched a token at a
// time. Scores and accumulation are float32; bf16 is widened on load and rounded to nearest even
// on store. With AVX-512 or AVX2 (head_dim a multiple of a vector: 16 or 8 floats) a key is
// widened once for its head's G query rows (with AVX512-BF16 and head_dim a multiple of 32, bf16
// keys are dotted with the bf16 query in place, float32 sums, the scale applied to the score), a
// vector's worth of tokens' partial sums are reduced together, and the weighted values accumulate
// in registers, a head at a time from cache. Measured on AVX-512: 1.9x faster with the cache hot,
// 1.4x at batch 1 over 2048 tokens; with the cache cold (a batch-64 step) the spread prefetch
// took a layer from 1.04 to 0.63 ms, the bf16 dots to 0.55. The same code on AVX2 (8 lanes)
// against the loops the compiler vectorised: batch 64 x 256 tokens 1.8-2.1 -> 1.0-1.5 ms, batch
// 1 x 2048 0.26-0.41 -> 0.15-0.18 ms.
#include "cpu_simd.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(HERD_AVX512) && defined(__AVX512BF16__)
#define HERD_BF16_DOT 1  // bf16 keys dotted with vdpbf16ps (float32 accumulation)
#endif

template <typename T>
static inline float dot(const float* q, const T* k, int64_t D) {
#ifdef HERD_AVX512
  if (D % 16 == 0) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; c += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + c), load16(k + c), a);
    return _mm512_reduce_add_ps(a);
  }
#endif
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; d++) s += q[d] * to_f(k[d]);
  return s;
}

template <typename T>
static inline void axpy(float p, const T* v, float* acc, int64_t D) {
#ifdef HERD_AVX512
  if (D % 16 == 0) {
    const __m512 pp = _mm512_set1_ps(p);
    for (int64_t c = 0; c < D; c += 16)
      _mm512_storeu_ps(acc + c, _mm512_fmadd_ps(pp, load16(v + c), _mm512_loadu_ps(acc + c)));
    return;
  }
#endif
  for (int64_t d = 0; d < D; d++) acc[d] += p * to_f(v[d]);
}

// Softmax numerators in place (row of L scores, minus m); returns their sum.
static float exp_row(float* s, int64_t L, float m) {
  float total = 0.f;
  int64_t t = 0;
#ifdef HERD_AVX512
  __m512 tot = _mm512_setzero_ps();
  for (; t + 16 <= L; t += 16) {
    __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), _mm512_set1_ps(m)));
    _mm512_storeu_ps(s + t, e);
    tot = _mm512_add_ps(tot, e);
  }
  total = _mm512_reduce_add_ps(tot);
#endif
#pragma omp simd reduction(+ : total)
  for (int64_t u = t; u < L; u++) {
    s[u] = exp_poly(s[u] - m);
    total += s[u];
  }
  return total;
}

// Each of R score rows (stride L) replaced by its softmax numerators; returns their sums.
static std::vector<float> softmax_numerators(float* sc, int64_t R, int64_t L) {
  std::vector<float> sums(R);
  for (int64_t r = 0; r < R; r++) {
    float* s = sc + r * L;
    sums[r] = exp_row(s, L, *std::max_element(s, s + L));
  }
  return sums;
}

// [p, p + bytes) towards L2, a token's worth at a time: a whole block's prefetches issued at once
// stalled the thread until they landed (batch 64, 192 tokens: 1.04 ms a layer; spread: 0.65).
static inline void prefetch_l2(const void* p, int64_t bytes) {
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char*)p + off, 0, 2);
}
// How far ahead the keys are prefetched: 16 tokens of all KV heads (8-32 measured the same; a task
// reading fewer heads goes as many more tokens ahead, which measured ~10% faster at batch 1-4).
constexpr int64_t PREFETCH_AHEAD = 16;

#ifdef HERD_VEC
// acc (RG rows of stride D) = the RG rows of weights p (stride L) times the L cached values: 4
// vectors of columns at a time, the accumulators in registers, each value widened once for all
// RG rows (up to VALUE_ROWS: 4 x 4 accumulators of AVX-512's 32 registers, 2 x 4 of AVX2's 16).
constexpr int64_t VALUE_ROWS = vec::N == 16 ? 4 : 2;

template <int RG, typename T>
static void weighted_values(const float* p, const T* vc, const int64_t* row, int64_t L, int64_t bs,
                            int64_t tok, int64_t D, float* acc_out) {
  constexpr int N = vec::N;
  for (int64_t c0 = 0; c0 < D; c0 += 4 * N) {
    const int64_t nc = std::min<int64_t>(4, (D - c0) / N);
    vec::F acc[RG][4];
    for (int r = 0; r < RG; r++)
      for (int c = 0; c < 4; c++) acc[r][c] = vec::zero();
    for (int64_t t = 0, blk = 0, off = 0; t < L; t++) {
      const T* vp = vc + (row[blk] * bs + off) * tok + c0;
      if (++off == bs) off = 0, blk++;
      vec::F v[4];
      for (int c = 0; c < 4; c++) v[c] = c < nc ? vec::load(vp + N * c) : vec::zero();
      for (int r = 0; r < RG; r++) {
        const vec::F pr = vec::set(p[r * L + t]);
        for (int c = 0; c < 4; c++) acc[r][c] = vec::fma(pr, v[c], acc[r][c]);
      }
    }
    for (int r = 0; r < RG; r++)
      for (int c = 0; c < nc; c++) vec::store(acc_out + r * D + c0 + N * c, acc[r][c]);
  }
}

// Scores of all R query rows (qf: scaled float32, stride D; rows of KV heads hb.., G a head) over
// the context, in one pass: a token's keys for every head are contiguous and read once, each
// head's slice widened once for its G rows; every N tokens (a vector's lanes) the partial vectors
// are summed together (vec::lane_sums). The pass prefetches the keys PREFETCH_AHEAD tokens on and
// this token's values (for weighted_values' per-head passes, which then read from L2). sc: R rows
// of stride L; part: R * N * N floats.
template <typename T>
static void scores(const float* qf, const T* qb, float post, const T* kc, const T* vc,
                   const int64_t* row, int64_t L, int64_t bs, int64_t tok, int64_t D,
                   int64_t heads, int64_t G, float* part, float* sc) {
  constexpr int N = vec::N;
  const int64_t R = heads * G, C = D / N, nblk = (L + bs - 1) / bs;
  const int64_t span = heads * D * (int64_t)sizeof(T);  // the bytes of a token this task reads
  const int64_t lead = PREFETCH_AHEAD * tok / (heads * D);
  int64_t blk = 0, off = 0;  // the next token's block and offset in it (no division per token)
  for (int64_t t0 = 0; t0 < L; t0 += N) {
    const int n = (int)std::min<int64_t>(N, L - t0);
    for (int j = 0; j < N; j++) {
      if (j >= n) {
        for (int64_t r = 0; r < R; r++) vec::store(part + (r * N + j) * N, vec::zero());
        continue;
      }
      const T* kp = kc + (row[blk] * bs + off) * tok;
      prefetch_l2(vc + (row[blk] * bs + off) * tok, span);
      const int64_t ahead = off + lead, ab = blk + ahead / bs;
      if (ab < nblk) prefetch_l2(kc + (row[ab] * bs + ahead % bs) * tok, span);
      if (++off == bs) off = 0, blk++;
      for (int64_t h = 0; h < heads; h++) {
#ifdef HERD_BF16_DOT
        if constexpr (std::is_same_v<T, uint16_t>)
          if (qb) {  // bf16 pairs dotted in place: no widening, half the multiply-adds
            __m512bh kb[8];
            for (int64_t c = 0; c < D / 32; c++) kb[c] = (__m512bh)_mm512_loadu_si512(kp + h * D + 32 * c);
            for (int64_t g = 0; g < G; g++) {
              const int64_t r = h * G + g;
              __m512 a = _mm512_setzero_ps();
              for (int64_t c = 0; c < D / 32; c++)
                a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(qb + r * D + 32 * c), kb[c]);
              _mm512_storeu_ps(part + (r * 16 + j) * 16, a);
            }
            continue;
          }
#endif
        vec::F kv[16];
        for (int64_t c = 0; c < C; c++) kv[c] = vec::load(kp + h * D + N * c);
        for (int64_t g = 0; g < G; g++) {
          const int64_t r = h * G + g;
          vec::F a = vec::zero();
          for (int64_t c = 0; c < C; c++) a = vec::fma(vec::load(qf + r * D + N * c), kv[c], a);
          vec::store(part + (r * N + j) * N, a);
        }
      }
    }
    for (int64_t r = 0; r < R; r++) {
      vec::F v[N];
      for (int j = 0; j < N; j++) v[j] = vec::load(part + (r * N + j) * N);
      vec::store_first(sc + r * L + t0, vec::mul(vec::lane_sums(v), vec::set(post)), n);
    }
  }
}

// Heads [h0, h1) of one sequence with vector code (D a multiple of a vector, at most 16 of them):
// scores in one pass, softmax per row, then the weighted values a head (up to VALUE_ROWS rows) at
// a time in registers.
template <typename T>
static void attend_vec(const T* q, const T* kc, const T* vc, const int64_t* row, int64_t L, T* out,
                       int64_t Hq, int64_t Hkv, int64_t D, int64_t bs, int64_t h0, int64_t h1,
                       float scale, std::vector<float>& buf) {
  const int64_t G = Hq / Hkv, heads = h1 - h0, R = heads * G, tok = Hkv * D;
  buf.resize(R * (2 * D + L + vec::N * vec::N));
  float *qf = buf.data(), *acc = qf + R * D, *part = acc + R * D, *sc = part + R * vec::N * vec::N;
  const T* qb = nullptr;  // bf16 queries dotted as they are, the scale applied to the scores
#ifdef HERD_BF16_DOT
  if (std::is_same_v<T, uint16_t> && D % 32 == 0) qb = q + h0 * G * D;
#endif
  if (!qb)
    for (int64_t i = 0; i < R * D; i++) qf[i] = to_f(q[h0 * G * D + i]) * scale;
  scores(qf, qb, qb ? scale : 1.f, kc + h0 * D, vc + h0 * D, row, L, bs, tok, D, heads, G, part, sc);
  const std::vector<float> sums = softmax_numerators(sc, R, L);
  for (int64_t r0 = 0, rg; r0 < R; r0 += rg) {  // row groups never straddle two KV heads
    const int64_t h = r0 / G;
    rg = std::min<int64_t>({VALUE_ROWS, R - r0, (h + 1) * G - r0});
    const T* v = vc + (h0 + h) * D;
    switch (rg) {
      case 4: weighted_values<4>(sc + r0 * L, v, row, L, bs, tok, D, acc + r0 * D); break;
      case 3: weighted_values<3>(sc + r0 * L, v, row, L, bs, tok, D, acc + r0 * D); break;
      case 2: weighted_values<2>(sc + r0 * L, v, row, L, bs, tok, D, acc + r0 * D); break;
      default: weighted_values<1>(sc + r0 * L, v, row, L, bs, tok, D, acc + r0 * D);
    }
  }
  for (int64_t r = 0; r < R; r++)
    for (int64_t d = 0; d < D; d++) put(acc[r * D + d] / sums[r], out + (h0 * G + r) * D + d);
}
#endif

// Heads [h0, h1) of sequence b. Scratch: sc [(h1-h0)*G*L], qf/acc [(h1-h0)*G*D].
template <typename T>
static void attend(const T* q, const T* kc, const T* vc, const int64_t* row, int64_t L, T* out,
                   int64_t Hq, int64_t Hkv, int64_t D, int64_t bs, int64_t h0, int64_t h1,
                   float scale, std::vector<float>& buf) {
  const int64_t G = Hq / Hkv, R = (h1 - h0) * G;  // query rows handled here
  if (L <= 0) {  // nothing to attend to (never scheduled): zeros rather than garbage
    for (int64_t i = 0; i < R * D; i++) put(0.f, out + h0 * G * D + i);
    return;
  }
#ifdef HERD_VEC
  if (D % vec::N == 0 && D <= 16 * vec::N)
    return attend_vec(q, kc, vc, row, L, out, Hq, Hkv, D, bs, h0, h1, scale, buf);
#endif
  buf.assign(R * L + 2 * R * D, 0.f);
  float *sc = buf.data(), *qf = sc + R * L, *acc = qf + R * D;
  for (int64_t r = 0; r < R; r++)
    for (int64_t d = 0; d < D; d++) qf[r * D + d] = to_f(q[(h0 * G + r) * D + d]) * scale;
  const int64_t tok = Hkv * D, nblk = (L + bs - 1) / bs, span = (h1 - h0) * D * sizeof(T);
  for (int64_t blk = 0; blk < nblk; blk++) {
    const int64_t n = std::min(bs, L - blk * bs);
    for (int64_t j = 0; j < n; j++) {
      const int64_t slot = (row[blk] * bs + j) * tok, t = blk * bs + j, ahead = t + PREFETCH_AHEAD;
      const T* kp = kc + slot;
      if (ahead < L) prefetch_l2(kc + (row[ahead / bs] * bs + ahead % bs) * tok + h0 * D, span);
      prefetch_l2(vc + slot + h0 * D, span);  // for the values pass below, from L2
      for (int64_t r = 0; r < R; r++) sc[r * L + t] = dot(qf + r * D, kp + (h0 + r / G) * D, D);
    }
  }
  const std::vector<float> sums = softmax_numerators(sc, R, L);
  for (int64_t blk = 0; blk < nblk; blk++) {
    const int64_t n = std::min(bs, L - blk * bs);
    for (int64_t j = 0; j < n; j++) {
      const T* vp = vc + (row[blk] * bs + j) * tok;
      const int64_t t = blk * bs + j;
      for (int64_t r = 0; r < R; r++) axpy(sc[r * L + t], vp + (h0 + r / G) * D, acc + r * D, D);
    }
  }
  for (int64_t r = 0; r < R; r++)
    for (int64_t d = 0; d < D; d++) put(acc[r * D + d] / sums[r], out + (h0 * G + r) * D + d);
}

// How many tasks a sequence's KV heads split into: one (all its heads, read together) once there
// are enough sequences to share out, else one per KV head, so a single long sequence uses every
// thread. The fused decode step splits its attention the same way.
static inline int64_t kv_head_split(int64_t B, int64_t Hkv, int nthreads) {
  return B >= 4 * nthreads ? 1 : Hkv;
}

template <typename T>
static void decode(const T* q, const T* kc, const T* vc, const int64_t* table, const int64_t* lens,
                   T* out, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t bs,
                   int64_t width, float scale, int nthreads) {
  const int64_t split = kv_head_split(B, Hkv, nthreads), per = Hkv / split;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> buf;
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < split; s++)
        attend(q + b * Hq * D, kc, vc, table + b * width, lens[b], out + b * Hq * D, Hq, Hkv, D,
               bs, s * per, (s + 1) * per, scale, buf);
  }
}

// This step's K and V rows into their cache slots: T tokens of `row` bytes each (all KV heads),
// read with any token stride (views into the fused QKV output). index_copy_ took ~30 us a call.
extern "C" void herd_store_kv(const char* k, const char* v, int64_t k_stride, int64_t v_stride,
                              char* kc, char* vc, const int64_t* slots, int64_t T, int64_t row) {
  for (int64_t t = 0; t < T; t++) {
    std::memcpy(kc + slots[t] * row, k + t * k_stride, row);
    std::memcpy(vc + slots[t] * row, v + t * v_stride, row);
  }
}

#define ENTRY(NAME, T)                                                                        \
  extern "C" void NAME(const void* q, const void* k, const void* v, const int64_t* table,     \
                       const int64_t* lens, void* out, int64_t B, int64_t Hq, int64_t Hkv,   \
                       int64_t D, int64_t bs, int64_t width, float scale, int nthreads) {    \
    decode<T>((const T*)q, (const T*)k, (const T*)v, table, lens, (T*)out, B, Hq, Hkv, D, bs, \
              width, scale, nthreads);                                                        \
  }
ENTRY(herd_paged_decode_f32, float)
ENTRY(herd_paged_decode_bf16, uint16_t)
