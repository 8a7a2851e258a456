"""Correctness checks gpu_suite.py runs before it times anything, each returning a dict for the
suite's JSON with an `ok` verdict: TritonAttention and FlexAttention against the reference backend
(bf16, a step of decodes and prefill chunks over many key tiles; Triton over an fp8 cache too),
CUDA-graph decode against eager greedy tokens on a small model, fp8 `_scaled_mm` linears against
bf16, and the Triton layer ops (norm, SiLU, RoPE, fp8 quantisation) against the torch modules. On CPU (--tiny) the same code runs: compiled flex and graph capture are CUDA-only,
so there the static-buffer path runs uncaptured, and Triton's kernels run under its interpreter
when TRITON_INTERPRET=1 (the tests set it), else are left out.
"""

import random

import torch

from herd.engine.attention import AttentionMetadata, TorchAttention
from herd.engine.flex_attention import FlexAttention
from herd.engine.triton_attention import TritonAttention, unusable
from herd.model.quant import FP8


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 (NaN anywhere gives inf)."""
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - ref).norm() / ref.norm())


def _attention_step(dev: str, dtype: torch.dtype, bs: int, hq: int, hkv: int, d: int, seed: int):
    """Decodes of contexts 1..~1000 sharing prefix blocks, a prefill from 0 and a chunk after a
    cached prefix; blocks scattered over the cache."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    query_lens = [1] * 24 + [300, 64]
    seq_lens = [rng.randrange(1, 1000) for _ in range(24)] + [300, 700]
    need = [-(-n // bs) for n in seq_lens]
    free = rng.sample(range(sum(need) + 64), sum(need) + 64)
    tables = [[free.pop() for _ in range(k)] for k in need]
    share = min(need[0], need[1]) - 1  # decodes 0 and 1 share their full prefix blocks
    tables[1][:share] = tables[0][:share]

    def meta() -> AttentionMetadata:
        return AttentionMetadata.from_tables(tables, query_lens, seq_lens, 24, bs, dev)

    t = sum(query_lens)
    q, k, v = (torch.randn(t, h, d, generator=g).to(dev, dtype) for h in (hq, hkv, hkv))
    cache = torch.randn(2, len(free) + sum(need) + 1, bs, hkv, d, generator=g).to(dev, dtype)
    return q, k, v, cache, meta


def check_attention(dev: str, tiny: bool) -> dict:
    """Triton, flex (compiled on CUDA) and the torch backend in bf16 against the torch backend in
    float32 on upcast inputs, Llama-3-8B head shapes (32 / 8 heads of 128) unless tiny; then
    Triton over an fp8 cache against the torch backend over the same cache."""
    shape = (16, 4, 2, 16) if tiny else (16, 32, 8, 128)
    bs = shape[0]
    q, k, v, cache, meta = _attention_step(dev, torch.bfloat16, *shape, seed=0)
    ref = TorchAttention(bs).forward(q.float(), k.float(), v.float(), *cache.float(), meta())
    backends = {"torch": TorchAttention, "flex": FlexAttention}
    if not (why := unusable(torch.device(dev))):
        backends["triton"] = TritonAttention
    r, caches = {"triton_skipped": why} if why else {}, {}
    for name, cls in backends.items():
        caches[name] = cache.clone()
        r[f"{name}_rel_err"] = rel_err(cls(bs).forward(q, k, v, *caches[name], meta()), ref)
    r["same_cache_writes"] = all(torch.equal(c, caches["torch"]) for c in caches.values())
    r["ok"] = r["same_cache_writes"] and all(r[f"{n}_rel_err"] < 1e-2 for n in backends)
    if "triton" in backends:  # the fp8 cache: K/V on its grid (see the test of the same)
        k8, v8, c8 = k.to(FP8).to(k.dtype), v.to(FP8).to(v.dtype), cache.to(FP8)
        ref8 = TorchAttention(bs).forward(q, k8, v8, *c8.clone(), meta())
        got8 = TritonAttention(bs).forward(q, k8, v8, *c8.clone(), meta())
        r["triton_fp8_cache_rel_err"] = rel_err(got8, ref8)
        r["ok"] = r["ok"] and r["triton_fp8_cache_rel_err"] < 1e-2
    return r


def check_graphs(model_dir, dev: str, tokens: int) -> dict:
    """Greedy tokens of a small float32 model, decode batches 1, 3 (padded to 4) and 8, through
    captured CUDA graphs (on CPU: the same static-buffer step, uncaptured) and eagerly."""
    from herd.engine.cuda_graphs import GraphedDecode
    from herd.engine.llm import LLM
    from herd.engine.sampling_params import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    # fused_decode_max_batch=0: on CPU the fused C++ step would take the batches the graphs are for
    kw = dict(
        dtype="float32", num_kv_blocks=256, max_num_seqs=8, device=dev, fused_decode_max_batch=0
    )
    graphed = LLM(model_dir, enforce_eager=False, cuda_graph_max_batch=8, **kw)
    runner = graphed.engine.runner
    if dev == "cpu":  # no capture off CUDA: the static-buffer step the graphs would replay
        runner.graphs = GraphedDecode(runner.model, runner.backend, [1, 2, 4, 8], runner.inputs)
    eager = LLM(model_dir, enforce_eager=True, **kw)
    rng = random.Random(1)
    vocab = runner.model_config.vocab_size
    prompts = [[rng.randrange(10, vocab) for _ in range(rng.randrange(3, 40))] for _ in range(8)]
    same = total = 0
    for batch in (prompts[:1], prompts[:3], prompts):
        inputs = [{"prompt_token_ids": p} for p in batch]
        a = [o.outputs[0].token_ids for o in graphed.generate(inputs, greedy)]
        b = [o.outputs[0].token_ids for o in eager.generate(inputs, greedy)]
        same += sum(x == y for x, y in zip(a, b, strict=True))
        total += len(a)
    graphs = runner.graphs
    return {
        "sequences_identical": f"{same}/{total}",
        "buckets_run": sorted(graphs.captured),
        "buckets_failed": sorted(graphs.failed),
        "kind": type(graphs).__name__,
        "ok": same == total and not graphs.failed and {1, 4, 8} <= graphs.captured,
    }


def check_fp8(dev: str, tiny: bool) -> dict:
    """An fp8 linear (`_scaled_mm` on CUDA) against bf16 and against its own dequantized weight,
    8B's MLP shape unless tiny, at M = 1 and 256 tokens."""
    from torch import nn

    from herd.model.quant import Fp8Linear

    k, n = (64, 128) if tiny else (4096, 14336)
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(k, n, bias=False)
    lin.weight.data = (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)
    lin = lin.to(dev)
    fp8 = Fp8Linear.from_float(lin)
    dequant = fp8.weight.float() * fp8.weight_scale.float()[:, None]
    r = {"scaled_mm": dev == "cuda"}
    for m in (1, 256):
        x = torch.randn(m, k, generator=g).to(dev, torch.bfloat16)
        with torch.inference_mode():
            got = fp8(x)
        r[f"m{m}_rel_err_vs_bf16"] = rel_err(got, x.float() @ lin.weight.float().t())
        r[f"m{m}_rel_err_vs_dequant"] = rel_err(got, x.float() @ dequant.t())
    # e4m3 keeps 3 mantissa bits: a few percent per product, averaged down over k terms
    r["ok"] = all(v < 0.08 for key, v in r.items() if key.endswith("_vs_bf16"))
    return r


def check_layer_ops(dev: str, tiny: bool) -> dict:
    """triton_layer_ops against the torch modules they replace at Llama-3-8B sizes (tiny: small):
    largest distance in 16-bit ulps (rounding where torch rounds: 1 at most, for a statistic
    summed in another order) and e4m3 codes that differ from torch's. bf16 on CUDA; float16 in
    the interpreter, which truncates bf16."""
    import torch.nn.functional as F

    from herd.engine import triton_layer_ops as lo
    from herd.model.config import RopeConfig
    from herd.model.llama import RMSNorm
    from herd.model.quant import quantize_rows
    from herd.model.rope import RotaryEmbedding, apply_rotary

    if why := unusable(torch.device(dev)):
        return {"skipped": why, "ok": True}
    dtype = torch.bfloat16 if dev == "cuda" else torch.float16
    h, inter, heads, d, t = (64, 96, 6, 16, 5) if tiny else (4096, 14336, 40, 128, 7)
    g = torch.Generator().manual_seed(4)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev, dtype)

    def ulps(a, b):
        return int((a.view(torch.int16).int() - b.view(torch.int16).int()).abs().max())

    norm = RMSNorm(h, 1e-5).to(dev, dtype)
    norm.weight.data = rand(h)
    mine = lo.TritonRMSNorm(h, 1e-5).to(dev, dtype)
    mine.weight.data = norm.weight.data
    x, res = rand(t, h, scale=3), rand(t, h)
    (want, want_res), (got, got_res) = norm(x, res.clone()), mine(x, res.clone())
    r = {"rmsnorm_ulps": ulps(got, want), "residual_ulps": ulps(got_res, want_res)}
    gate_up = rand(t, 2 * inter, scale=4)
    want = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    r["silu_ulps"] = ulps(lo.TritonSiluAndMul()(gate_up), want)
    cos_sin = RotaryEmbedding(RopeConfig(), d, 4096).to(dev)(
        torch.arange(t, device=dev) * 97, dtype
    )
    qk = rand(t, heads, d)
    want = apply_rotary(qk, cos_sin)
    r["rope_ulps"] = ulps(lo.TritonRotary()(qk.clone(), cos_sin), want)
    x = rand(t, inter, scale=5)
    (q, scale), (ref_q, ref_scale) = lo.quantize_fp8(x), quantize_rows(x)
    r["fp8_scale_equal"] = bool(torch.equal(scale, ref_scale))
    r["fp8_codes_differing"] = int((q.view(torch.uint8) != ref_q.view(torch.uint8)).sum())
    exact_fp8 = r["fp8_codes_differing"] == 0 or dev != "cuda"  # the interpreter rounds e4m3 off
    r["ok"] = max(r[k] for k in r if k.endswith("ulps")) <= 1 and r["fp8_scale_equal"] and exact_fp8
    return r
