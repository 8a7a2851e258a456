"""Compiles TritonAttention's kernels for a GPU this machine lacks (Triton's own ptxas makes the
cubin; no driver needed) and reports each build's registers, stack (spills) and shared memory,
as JSON. The launch's specialization is restated here: 16-byte aligned pointers, strides that
are multiples of 16. Run in a process without TRITON_INTERPRET (the test does).

    python tests/engine/triton_compile.py 90:bf16:bf16:decode:4:128 90:bf16:rmsnorm:4096
    attention: arch:activations:cache:launch:GQA group:head size (launch decode, decode/S: S key
    ranges and the merge kernel, or prefill); layer ops (triton_layer_ops): arch:activations:
    rmsnorm|silu|rope|fp8quant|storekv|storekv-fp8:hidden size (rope, storekv: heads x head
    size, as 40x128)
"""

import json
import os
import re
import subprocess
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from herd.engine import triton_attention as ta
from herd.engine import triton_layer_ops as lo

POINTERS = ["q_ptr", "out_ptr", "part_out", "part_lse", "k_cache", "v_cache", "tables"]
PLAN = ["ctx_lens", "tile_seqs", "tile_firsts", "seq_ends"]
TOKEN_STRIDES = ["stride_qt", "stride_ot", "stride_kb", "stride_ks", "stride_vb", "stride_vs"]
HEAD_STRIDES = ["stride_qh", "stride_oh", "stride_kh", "stride_vh"]


def build(arch: int, dtype: str, cache: str, kind: str, group: int, head_dim: int) -> dict:
    decode = kind.startswith("decode")
    splits = int(kind.split("/")[1]) if "/" in kind else 1
    rows = ta._rows(group, decode)
    wide, fp8 = dtype == "fp32", cache == "fp8e4nv"
    block_d = max(16, ta.next_pow2(head_dim))
    constexprs = dict(
        GROUP=group, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=16, ROWS=rows,
        BLOCK_Q=1 if decode else rows // group, KEYS=ta.KEY_TILE, DECODE=decode, SPLITS=splits,
        WIDE=wide, PRECISION="ieee" if wide else "tf32", FP8_BITS=fp8,
    )  # fmt: skip
    signature = {"q_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "tables": "*i64"}
    cached = "u8" if fp8 else cache  # an fp8 cache is passed as bytes
    signature |= {"k_cache": f"*{cached}", "v_cache": f"*{cached}", "scale_log2": "fp32"}
    signature |= {"part_out": "*fp32", "part_lse": "*fp32"}
    signature |= dict.fromkeys(PLAN, "*i64" if decode else "*i32")
    signature |= dict.fromkeys(TOKEN_STRIDES + HEAD_STRIDES + ["stride_table"], "i32")
    aligned = POINTERS + PLAN + TOKEN_STRIDES + (HEAD_STRIDES if head_dim % 16 == 0 else [])
    report = _compile(
        ta.kernels().paged_attention, arch, signature, constexprs, aligned, 4 if decode else 8
    )
    if splits > 1:
        signature = {"part_out": "*fp32", "part_lse": "*fp32", "out_ptr": f"*{dtype}"}
        signature |= {"stride_ot": "i32", "stride_oh": "i32"}
        constexprs = dict(SPLITS=splits, BLOCK_S=ta.next_pow2(splits), HEAD_DIM=head_dim)
        constexprs["BLOCK_D"] = block_d
        merge = _compile(ta.kernels().merge_splits, arch, signature, constexprs, list(signature), 4)
        report |= {f"merge_{k}": v for k, v in merge.items()}
    return report


def build_layer_op(arch: int, dtype: str, op: str, size: str) -> dict:
    """A triton_layer_ops kernel at a model's sizes, specialised as its launch is."""
    k = lo._get()
    if op == "rope":
        heads, head_dim = map(int, size.split("x"))
        signature = {"x_ptr": f"*{dtype}", "cos_ptr": f"*{dtype}", "sin_ptr": f"*{dtype}"}
        signature |= {"stride_t": "i32", "heads": "i32"}
        half = head_dim // 2
        constexprs = dict(HALF=half, BLOCK_H=ta.next_pow2(heads), BLOCK_HALF=ta.next_pow2(half))
        return _compile(k.rope, arch, signature, constexprs, list(signature), 4)
    if op.startswith("storekv"):
        heads, head_dim = map(int, size.split("x"))
        cache = "fp8e4nv" if op.endswith("fp8") else dtype
        signature = {"k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "slots": "*i64"}
        signature |= {"k_cache": f"*{cache}", "v_cache": f"*{cache}", "fp8_max": "fp32"}
        signature |= dict.fromkeys(["stride_kt", "stride_vt", "stride_kc", "stride_vc"], "i32")
        row = heads * head_dim
        constexprs = dict(ROW=row, BLOCK=ta.next_pow2(row), FP8_CACHE=cache != dtype)
        return _compile(ta.kernels().store_kv, arch, signature, constexprs, list(signature), 4)
    n = int(size)
    if op == "rmsnorm":
        signature = {p: f"*{dtype}" for p in ("x_ptr", "res_ptr", "w_ptr", "out_ptr")}
        signature |= {"h": "i32", "eps": "fp32"}
        constexprs = dict(HAS_RESIDUAL=True, BLOCK=ta.next_pow2(n))
        warps = 8 if n > 2048 else 4  # as TritonRMSNorm launches it
        return _compile(k.add_rmsnorm, arch, signature, constexprs, list(signature), warps)
    if op == "silu":
        signature = {"gate_up": f"*{dtype}", "out_ptr": f"*{dtype}", "n": "i32"}
        return _compile(k.silu_and_mul, arch, signature, dict(BLOCK=1024), list(signature), 4)
    signature = {"x_ptr": f"*{dtype}", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "k": "i32"}
    signature["fp8_max"] = "fp32"
    return _compile(k.quantize_fp8, arch, signature, dict(BLOCK=ta.next_pow2(n)), ["x_ptr"], 8)


def _compile(kernel, arch, signature, constexprs, aligned, warps: int) -> dict:
    signature = signature | dict.fromkeys(constexprs, "constexpr")
    assert set(signature) == set(kernel.arg_names), "the kernel's arguments changed"
    src = ASTSource(
        fn=kernel,
        signature={n: signature[n] for n in kernel.arg_names},
        constexprs={(kernel.arg_names.index(n),): v for n, v in constexprs.items()},
        attrs={(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = dict(num_warps=warps)
    out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return {"shared": out.metadata.shared, **_resources(out.asm["cubin"])}


def _resources(cubin: bytes) -> dict:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    path = f"/tmp/herd-triton-{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        text = subprocess.run(
            [tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(path)
    return {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK):(\d+)", text)}


if __name__ == "__main__":
    report = {}
    for spec in sys.argv[1:]:
        parts = spec.split(":")
        try:
            if len(parts) == 4:
                report[spec] = build_layer_op(int(parts[0]), *parts[1:])
            else:
                arch, dtype, cache, kind, group, head_dim = parts
                report[spec] = build(int(arch), dtype, cache, kind, int(group), int(head_dim))
        except Exception as e:  # noqa: BLE001 - reported per build
            report[spec] = {"error": repr(e)[:500]}
    print(json.dumps(report))
