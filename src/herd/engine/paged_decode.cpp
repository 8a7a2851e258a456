// Paged decode attention for CPUs (herd.engine.cpu_paged_decode builds and loads this file).
// One query token per sequence attends to its first lens[b] cached tokens, read through the block
// table: cache [num_blocks, block_size, Hkv, D], q and out [B, Hq, D], GQA groups of G = Hq/Hkv.
// A task takes one sequence and a range of KV heads; it walks the context token by token, so a
// token's heads are read together (contiguous) and the next block is prefetched. Scores and
// accumulation are float32; bf16 is widened on load and rounded to nearest even on store.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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
  if ((u & 0x7fffffffu) > 0x7f800000u) { *o = (uint16_t)((u >> 16) | 0x40); return; }  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  *o = (uint16_t)(u >> 16);
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define HERD_AVX512 1
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const uint16_t* p) {
  __m256i v = _mm256_loadu_si256((const __m256i*)p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
// e^x for x <= 0 (a score minus its row's max): 2^n * p(r), |r| <= ln2/2, degree-6 Taylor.
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
  for (; t < L; t++) { s[t] = expf(s[t] - m); total += s[t]; }
  return total;
}

template <typename T>
static void prefetch_block(const T* cache, int64_t block, int64_t row_elems) {
#ifdef HERD_AVX512
  const char* p = (const char*)(cache + block * row_elems);
  for (int64_t off = 0; off < row_elems * (int64_t)sizeof(T); off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
#endif
}

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
  buf.assign(R * L + 2 * R * D, 0.f);
  float *sc = buf.data(), *qf = sc + R * L, *acc = qf + R * D;
  for (int64_t r = 0; r < R; r++)
    for (int64_t d = 0; d < D; d++) qf[r * D + d] = to_f(q[(h0 * G + r) * D + d]) * scale;
  const int64_t tok = Hkv * D, nblk = (L + bs - 1) / bs;
  for (int64_t blk = 0; blk < nblk; blk++) {
    if (blk + 1 < nblk) prefetch_block(kc, row[blk + 1], bs * tok);
    const int64_t n = std::min(bs, L - blk * bs);
    for (int64_t j = 0; j < n; j++) {
      const T* kp = kc + (row[blk] * bs + j) * tok;
      const int64_t t = blk * bs + j;
      for (int64_t r = 0; r < R; r++) sc[r * L + t] = dot(qf + r * D, kp + (h0 + r / G) * D, D);
    }
  }
  std::vector<float> sums(R);
  for (int64_t r = 0; r < R; r++) {
    float* s = sc + r * L;
    sums[r] = exp_row(s, L, *std::max_element(s, s + L));
  }
  for (int64_t blk = 0; blk < nblk; blk++) {
    if (blk + 1 < nblk) prefetch_block(vc, row[blk + 1], bs * tok);
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

template <typename T>
static void decode(const T* q, const T* kc, const T* vc, const int64_t* table, const int64_t* lens,
                   T* out, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t bs,
                   int64_t width, float scale, int nthreads) {
  // Enough sequences to share out: one task per sequence, all its heads (contiguous reads);
  // otherwise one task per (sequence, KV head), so a single long sequence uses every thread.
  const int64_t split = B >= 4 * nthreads ? 1 : Hkv, per = Hkv / split;
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

#define ENTRY(NAME, T)                                                                        \
  extern "C" void NAME(const void* q, const void* k, const void* v, const int64_t* table,     \
                       const int64_t* lens, void* out, int64_t B, int64_t Hq, int64_t Hkv,   \
                       int64_t D, int64_t bs, int64_t width, float scale, int nthreads) {    \
    decode<T>((const T*)q, (const T*)k, (const T*)v, table, lens, (T*)out, B, Hq, Hkv, D, bs, \
              width, scale, nthreads);                                                        \
  }
ENTRY(herd_paged_decode_f32, float)
ENTRY(herd_paged_decode_bf16, uint16_t)
