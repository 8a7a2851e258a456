// Whole decode steps of a Llama model on CPUs, in one native call per step (herd.engine.cpu_decoder
// builds and calls this file). Small decode batches are bound by streaming the weights once per
// step; done op by op from Python they lose most of the time to per-op overhead between ~200
// small GEMVs. Here one OpenMP team runs every layer: each projection splits its outputs over
// the threads (whole blocks of weights packed in blocks, see packed_linear; else weight rows),
// read once for every batch row; the per-row elementwise work (cpu_layer_ops.cpp's row functions,
// which the eager model runs too) is shared out by rows between barriers; attention is
// paged_decode.cpp's kernel over sequences (or (sequence, KV head) when there are few).
// Rounding mirrors the eager bf16 model (each op's output rounded to the activation dtype), so
// the logits match it to accumulation order; float32 models run in float32 throughout.
#include "cpu_layer_ops.cpp"
#include "cpu_linear.h"
#include "paged_decode.cpp"

#include <omp.h>

#include <type_traits>

struct LayerW {  // one decoder layer's weights (dtype T); biases may be null
  const void *in_norm, *qkv, *qkv_b, *o, *o_b, *post_norm, *gate_up, *gate_up_b, *down, *down_b;
  // the same projections packed in blocks (BlockLinear, where herd_decoder_packs; else null):
  // gate and up apart, so a thread's gate and up columns are whole blocks of each
  const uint32_t *qkv_p, *o_p, *gate_p, *up_p, *down_p;
};

struct ModelW {  // the model, its KV cache [L, 2, blocks, block_size, Hkv, D] and RoPE tables
  int64_t hidden, heads, kv_heads, head_dim, inter, vocab, layers, block_size, cache_blocks;
  float eps, scale;
  const void *embed, *final_norm, *lm_head;
  const uint32_t* lm_head_p;  // packed, or null
  const LayerW* layer;
  void* kv;
  const float *cos, *sin;  // [max_positions, D]
};

struct Step {  // one decode step: a token per sequence
  const int64_t *ids, *pos, *slots, *table, *lens;
  int64_t batch, width;
  float* logits;   // [batch, vocab]
  float* scratch;  // herd_decoder_scratch_floats(model, batch) floats
};

// Whether this build reads weights of `bytes`-wide elements packed in blocks (else weight rows).
extern "C" int herd_decoder_packs(int bytes) {
#if defined(HERD_PACKED)
  return bytes == 4 || bytes == 2;
#else
  return 0;
#endif
}

static inline void span(int64_t N, int tid, int nt, int64_t& n0, int64_t& n1) {
  const int64_t per = (N + nt - 1) / nt;
  n0 = std::min(N, tid * per);
  n1 = std::min(N, n0 + per);
}

// The output columns [c0, c1) of N this thread computes: whole blocks when the weights are
// packed (no block split between threads), an even share of rows otherwise.
static inline void cols(int64_t N, bool packed, int tid, int nt, int64_t& c0, int64_t& c1) {
  if (!packed) return span(N, tid, nt, c0, c1);
  int64_t b0, b1;
  span((N + PACK_COLS - 1) / PACK_COLS, tid, nt, b0, b1);
  c0 = std::min(N, b0 * PACK_COLS), c1 = std::min(N, b1 * PACK_COLS);
}

// out[:, c0:c1) = x . w[c0:c1)^T + bias for B batch rows, from the packed weights when given.
template <typename T, typename O>
static void project(const T* x, int64_t B, const void* w, const uint32_t* wp, const void* bias,
                    int64_t K, int64_t N, int64_t c0, int64_t c1, O* out, int64_t ldo) {
  if (c0 >= c1) return;
#if defined(HERD_PACKED)
  if (wp) {
    const int64_t b0 = c0 / PACK_COLS, b1 = (c1 + PACK_COLS - 1) / PACK_COLS;
    return packed_linear(x, B, wp, (const T*)bias, K, N, b0, b1, out, ldo);
  }
#endif
  linear(x, B, w, bias, K, c0, c1, out, ldo);
}

struct Buffers {  // views of the scratch (dtype T), the residual stream h among them
  void *h, *xn, *qkv, *att, *out, *gu, *act;
};

static Buffers carve(const ModelW& m, int64_t B, float* s) {
  const int64_t H = m.hidden, qkv = (m.heads + 2 * m.kv_heads) * m.head_dim;
  Buffers b;
  b.h = s;
  b.xn = s += B * H;
  b.qkv = s += B * H;
  b.att = s += B * qkv;
  b.out = s += B * m.heads * m.head_dim;
  b.gu = s += B * H;
  b.act = s += B * 2 * m.inter;
  return b;
}

extern "C" int64_t herd_decoder_scratch_floats(const ModelW* m, int64_t B) {
  return B * (3 * m->hidden + (m->heads + 2 * m->kv_heads) * m->head_dim +
              m->heads * m->head_dim + 3 * m->inter);
}

// Rope q and k, then write this step's k and v into the cache: rows shared out over the team
// (an orphaned worksharing loop, ending in a barrier), as every per-row step here is.
template <typename T>
static void rope_and_store(const ModelW& m, const Step& s, T* qkv, T* kc, T* vc) {
  const int64_t D = m.head_dim, Hq = m.heads, Hkv = m.kv_heads, row = (Hq + 2 * Hkv) * D;
#pragma omp for
  for (int64_t b = 0; b < s.batch; b++) {
    T* x = qkv + b * row;
    rope_row(x, Hq + Hkv, D, m.cos + s.pos[b] * D, m.sin + s.pos[b] * D);
    std::memcpy(kc + s.slots[b] * Hkv * D, x + Hq * D, Hkv * D * sizeof(T));
    std::memcpy(vc + s.slots[b] * Hkv * D, x + (Hq + Hkv) * D, Hkv * D * sizeof(T));
  }
}

template <typename T>
static void layer(const ModelW& m, const LayerW& L, const Step& s, T* kc, T* vc, Buffers& b,
                  int tid, int nt, std::vector<float>& abuf) {
  const int64_t B = s.batch, H = m.hidden, D = m.head_dim, Hq = m.heads, Hkv = m.kv_heads;
  const int64_t I = m.inter, NQKV = (Hq + 2 * Hkv) * D;
  T *h = (T*)b.h, *xn = (T*)b.xn, *qkv = (T*)b.qkv, *att = (T*)b.att, *out = (T*)b.out;
  T *gu = (T*)b.gu, *act = (T*)b.act;
  const T *in_norm = (const T*)L.in_norm, *post_norm = (const T*)L.post_norm;
  const T* up = (const T*)L.gate_up + I * H;  // the up rows of the plain gate_up weight
  const T* up_b = L.gate_up_b ? (const T*)L.gate_up_b + I : nullptr;
  const bool pk = L.qkv_p != nullptr;
  int64_t n0, n1;
#pragma omp for
  for (int64_t r = 0; r < B; r++) rmsnorm_row(h + r * H, in_norm, H, m.eps, xn + r * H);
  cols(NQKV, pk, tid, nt, n0, n1);
  project(xn, B, L.qkv, L.qkv_p, L.qkv_b, H, NQKV, n0, n1, qkv, NQKV);
#pragma omp barrier
  rope_and_store(m, s, qkv, kc, vc);
  const int64_t split = kv_head_split(B, Hkv, nt), per = Hkv / split;
#pragma omp for collapse(2) schedule(dynamic, 1)
  for (int64_t r = 0; r < B; r++)
    for (int64_t g = 0; g < split; g++)
      attend(qkv + r * NQKV, kc, vc, s.table + r * s.width, s.lens[r], att + r * Hq * D, Hq, Hkv,
             D, m.block_size, g * per, (g + 1) * per, m.scale, abuf);
  cols(H, pk, tid, nt, n0, n1);
  project(att, B, L.o, L.o_p, L.o_b, Hq * D, H, n0, n1, out, H);
#pragma omp barrier
#pragma omp for
  for (int64_t r = 0; r < B; r++) {
    add_row(h + r * H, out + r * H, H);
    rmsnorm_row(h + r * H, post_norm, H, m.eps, xn + r * H);
  }
  cols(I, pk, tid, nt, n0, n1);  // this thread's gate columns and the matching up ones, SwiGLU
  project(xn, B, L.gate_up, L.gate_p, L.gate_up_b, H, I, n0, n1, gu, 2 * I);
  project(xn, B, up, L.up_p, up_b, H, I, n0, n1, gu + I, 2 * I);
  for (int64_t r = 0; r < B; r++)
    swiglu_row(gu + r * 2 * I + n0, gu + r * 2 * I + I + n0, n1 - n0, act + r * I + n0);
#pragma omp barrier
  cols(H, pk, tid, nt, n0, n1);
  project(act, B, L.down, L.down_p, L.down_b, I, H, n0, n1, out, H);
#pragma omp barrier
#pragma omp for
  for (int64_t r = 0; r < B; r++) add_row(h + r * H, out + r * H, H);
}

template <typename T>
static void forward(const ModelW& m, const Step& s, int nthreads) {
  const int64_t B = s.batch, H = m.hidden, V = m.vocab;
  Buffers b = carve(m, B, s.scratch);
  const int64_t half = m.cache_blocks * m.block_size * m.kv_heads * m.head_dim;
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    std::vector<float> abuf;
#pragma omp for
    for (int64_t r = 0; r < B; r++)
      std::memcpy((T*)b.h + r * H, (const T*)m.embed + s.ids[r] * H, H * sizeof(T));
    for (int64_t l = 0; l < m.layers; l++) {
      T* kc = (T*)m.kv + 2 * l * half;
      layer<T>(m, m.layer[l], s, kc, kc + half, b, tid, nt, abuf);
    }
#pragma omp for
    for (int64_t r = 0; r < B; r++)
      rmsnorm_row((T*)b.h + r * H, (const T*)m.final_norm, H, m.eps, (T*)b.xn + r * H);
    int64_t n0, n1;
    cols(V, m.lm_head_p != nullptr, tid, nt, n0, n1);
    project((const T*)b.xn, B, m.lm_head, m.lm_head_p, nullptr, H, V, n0, n1, s.logits, V);
  }
}

extern "C" void herd_decoder_f32(const ModelW* m, const Step* s, int nthreads) {
  forward<float>(*m, *s, nthreads);
}
extern "C" void herd_decoder_bf16(const ModelW* m, const Step* s, int nthreads) {
  forward<uint16_t>(*m, *s, nthreads);
}
