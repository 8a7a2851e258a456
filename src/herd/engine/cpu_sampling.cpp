// The greedy sampler's pass over float32 logits on CPUs (herd.engine.sampler calls this file):
// each row's argmax (the first, as torch's) and its log-sum-exp, in two vectorised passes over
// the row where torch's argmax, log_softmax and gather took ~0.9 ms for 64 rows of 16k.
#include "cpu_simd.h"

static void argmax_lse_row(const float* x, int64_t V, int64_t* best, float* lse) {
  int64_t arg = 0;
  float m = x[0];
#ifdef HERD_AVX512
  __m512 vm = _mm512_set1_ps(x[0]);
  __m512i vi = _mm512_setzero_si512(), idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int64_t k = 0;
  if (V < (int64_t)1 << 31) {
    for (; k + 16 <= V; k += 16, idx = _mm512_add_epi32(idx, step)) {
      const __m512 v = _mm512_loadu_ps(x + k);
      const __mmask16 up = _mm512_cmp_ps_mask(v, vm, _CMP_GT_OQ);  // strictly: first index wins
      vm = _mm512_mask_mov_ps(vm, up, v);
      vi = _mm512_mask_mov_epi32(vi, up, idx);
    }
    alignas(64) float lm[16];
    alignas(64) int32_t li[16];
    _mm512_store_ps(lm, vm);
    _mm512_store_si512(li, vi);
    for (int j = 0; j < 16; j++)
      if (lm[j] > m || (lm[j] == m && li[j] < arg)) m = lm[j], arg = li[j];
  }
  for (; k < V; k++)
    if (x[k] > m) m = x[k], arg = k;
  __m512 s = _mm512_setzero_ps();
  const __m512 vmax = _mm512_set1_ps(m);
  for (k = 0; k < V; k += 16) {
    const __mmask16 mask = first(V - k);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + k), vmax));
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(mask, e));
  }
  float sum = _mm512_reduce_add_ps(s);
#else
  for (int64_t k = 1; k < V; k++)
    if (x[k] > m) m = x[k], arg = k;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < V; k++) sum += exp_poly(x[k] - m);
#endif
  *best = arg;
  *lse = m + std::log(sum);
}

extern "C" void herd_argmax_logsumexp(const float* logits, int64_t rows, int64_t V, int64_t* best,
                                      float* lse, int nthreads) {
#pragma omp parallel for num_threads(rows * V >= (1 << 16) ? nthreads : 1) schedule(static)
  for (int64_t r = 0; r < rows; r++) argmax_lse_row(logits + r * V, V, best + r, lse + r);
}
