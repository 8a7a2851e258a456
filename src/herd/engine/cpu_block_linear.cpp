// bf16 and float32 linears on CPUs from weights packed in blocks (cpu_linear.h's packed_linear,
// the layout the fused decode step reads): y[M, N] = rnd(x[M, K] . w^T + bias) for any M, so
// prefill and large decode batches read the same single packed copy as the fused step
// (herd.engine.cpu_block_linear calls this). AVX-512 or AVX2 builds only; elsewhere no symbols.
#include "cpu_linear.h"

#include <omp.h>

#if defined(HERD_PACKED)
// Rows are taken in near-equal panels of up to 8 tiles that stay in L2 while the output blocks of
// a thread's share stream past them; tasks are (panel, block range), so the team splits even a
// one-panel batch. (Panels of exactly 88 rows and a remainder left 128 rows split 88 / 40
// between 2 threads: 23.2 ms for SmolLM2's lm_head where 64 rows took 8.6.)
// bf16, 2048 rows x K 576-2048 on 2 cores: 88-row panels ~430 GFLOP/s (oneDNN's rate), 96
// (12-row tiles) ~395, 132 ~400, 80 ~420 (benchmarks/bench_block_linear.py).
constexpr int64_t PANEL_ROWS = 8 * PACK_ROWS;

template <typename T>
static void block_linear(const T* x, int64_t M, int64_t K, const uint32_t* wp, int64_t N,
                         const T* bias, T* out, int64_t ldo, int nthreads) {
  const int64_t blocks = (N + PACK_COLS - 1) / PACK_COLS;
  const int64_t panels = (M + PANEL_ROWS - 1) / PANEL_ROWS;
  // 4 block ranges a panel, more when panels are fewer than threads (~4 tasks a thread)
  const int64_t per_panel = std::max<int64_t>(1, (nthreads + panels - 1) / panels * 4);
  const int64_t ranges = std::min<int64_t>(blocks, per_panel);
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
  for (int64_t p = 0; p < panels; p++)
    for (int64_t r = 0; r < ranges; r++) {
      const int64_t m0 = p * M / panels, mt = (p + 1) * M / panels - m0;  // near-equal panels
      const int64_t b0 = r * blocks / ranges, b1 = (r + 1) * blocks / ranges;
      packed_linear(x + m0 * K, mt, wp, bias, K, N, b0, b1, out + m0 * ldo, ldo);
    }
}

#define HERD_ENTRY(NAME, T)                                                                     \
  extern "C" void NAME(const T* x, int64_t M, int64_t K, const uint32_t* wp, int64_t N,         \
                       const T* bias, T* out, int64_t ldo, int nthreads) {                       \
    block_linear(x, M, K, wp, N, bias, out, ldo, nthreads);                                     \
  }
HERD_ENTRY(herd_block_linear_f32, float)
HERD_ENTRY(herd_block_linear_bf16, uint16_t)
#endif
