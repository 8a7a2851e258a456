"""TritonAttention's Triton kernels: `paged_attention`, one program per (query tile of one
sequence, KV head[, key range]), `merge_splits`, which folds a split decode's key ranges together,
and `store_kv`, the step's K/V rows into their slots. An fp8 cache is read as bytes (`widen`), so
attention needs no fp8 instructions. triton_attention imports this module on first use: Triton is
needed only where the backend runs, and TRITON_INTERPRET is read at that import.
"""

import triton
import triton.language as tl


@triton.jit
def widen(x, dtype: tl.constexpr, FP8_BITS: tl.constexpr):
    """A loaded K/V tile in the compute dtype. FP8_BITS: x is e4m3 read as uint8, widened by
    bit moves to float16 (2^-8 too small, subnormals included) as quant.fp8_widen does: no
    fp8 instructions, so any GPU (Ampere too) reads an fp8 cache."""
    if FP8_BITS:
        bits = (x.to(tl.int8, bitcast=True).to(tl.int32) << 7) & 0xBF80  # sign, exp, mantissa
        half = bits.to(tl.int16).to(tl.float16, bitcast=True)
        return (half.to(tl.float32) * 256.0).to(dtype)
    return x.to(dtype)


@triton.jit(do_not_specialize=["stride_table"])  # the table's width changes every step
def paged_attention(
    q_ptr, out_ptr, part_out, part_lse, k_cache, v_cache, tables, ctx_lens,
    tile_seqs, tile_firsts, seq_ends,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_table,
    scale_log2,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, KEYS: tl.constexpr,
    DECODE: tl.constexpr, SPLITS: tl.constexpr, WIDE: tl.constexpr, PRECISION: tl.constexpr,
    FP8_BITS: tl.constexpr,
):  # fmt: skip
    """Rows r of the program: token first + r // GROUP, query head kvh * GROUP + r % GROUP.
    DECODE: program i is decode i (one token). SPLITS > 1 (decodes): program (i, kvh, s)
    takes the s-th of SPLITS equal key ranges and writes its normalised output and log2
    sum-exp to part_out / part_lse for merge_splits."""
    tile, kvh = tl.program_id(0), tl.program_id(1)
    if DECODE:
        seq, first, end = tile, tile, tile + 1
    else:
        seq = tl.load(tile_seqs + tile)
        first = tl.load(tile_firsts + tile)
        end = tl.load(seq_ends + seq)
    ctx = tl.load(ctx_lens + seq)
    r = tl.arange(0, ROWS)
    tok = first + r // GROUP
    valid = (r < BLOCK_Q * GROUP) & (tok < end)
    head = kvh * GROUP + r % GROUP
    pos = ctx - end + tok  # absolute position of the row's token
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(
        q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=valid[:, None] & dmask[None, :],
        other=0.0,
    )
    if WIDE:
        q = q.to(tl.float32)
    # keys [lo, hi): every key the tile's last token sees, or this split's share of them
    hi = ctx - end + tl.minimum(first + BLOCK_Q, end)
    lo = 0
    if SPLITS > 1:
        share = tl.cdiv(tl.cdiv(hi, SPLITS), KEYS) * KEYS
        lo = tl.program_id(2) * share
        hi = tl.minimum(hi, lo + share)
    m = tl.full([ROWS], -1e30, tl.float32)  # finite: a row with no keys yields no NaN
    total = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    table = tables + seq.to(tl.int64) * stride_table
    for start in range(lo, hi, KEYS):
        n = start + tl.arange(0, KEYS)
        inside = n < hi
        block = tl.load(table + n // BLOCK_SIZE, mask=inside, other=0).to(tl.int64)
        at = n % BLOCK_SIZE
        kmask = inside[:, None] & dmask[None, :]
        k = widen(tl.load(
            k_cache + block[:, None] * stride_kb + at[:, None] * stride_ks
            + kvh * stride_kh + d[None, :],
            mask=kmask, other=0,
        ), q.dtype, FP8_BITS)  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(valid[:, None] & (n[None, :] <= pos[:, None]), s, float("-inf"))
        top = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - top[:, None])
        alpha = tl.exp2(m - top)
        total = total * alpha + tl.sum(p, 1)
        v = widen(tl.load(
            v_cache + block[:, None] * stride_vb + at[:, None] * stride_vs
            + kvh * stride_vh + d[None, :],
            mask=kmask, other=0,
        ), q.dtype, FP8_BITS)  # fmt: skip
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m = top
    acc = acc / tl.where(total > 0, total, 1.0)[:, None]  # padding rows have no keys
    rmask = valid[:, None] & dmask[None, :]
    if SPLITS > 1:
        # [token, query head, split]: an empty split's log sum-exp is -inf
        slot = (tok * (tl.num_programs(1) * GROUP) + head) * SPLITS + tl.program_id(2)
        lse = tl.where(total > 0, m + tl.log2(tl.maximum(total, 1e-30)), float("-inf"))
        tl.store(part_lse + slot, lse, mask=valid)
        tl.store(part_out + slot[:, None] * HEAD_DIM + d[None, :], acc, mask=rmask)
    else:
        out = out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def merge_splits(
    part_out, part_lse, out_ptr, stride_ot, stride_oh,
    SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Program (token, query head): the splits' outputs weighted by their sum-exps."""
    tok, head = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    at = (tok * tl.num_programs(1) + head) * SPLITS + s
    lse = tl.load(part_lse + at, mask=s < SPLITS, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    mask = (s < SPLITS)[:, None] & (d < HEAD_DIM)[None, :]
    o = tl.load(part_out + at[:, None] * HEAD_DIM + d[None, :], mask=mask, other=0.0)
    o = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    out = out_ptr + tok * stride_ot + head * stride_oh + d
    tl.store(out, o.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


@triton.jit
def store_kv(
    k_ptr, v_ptr, k_cache, v_cache, slots, stride_kt, stride_vt, stride_kc, stride_vc,
    fp8_max, ROW: tl.constexpr, BLOCK: tl.constexpr, FP8_CACHE: tl.constexpr,
):  # fmt: skip
    """Token t's K and V rows (ROW = KV heads x head size, contiguous) into cache slot
    slots[t]; an fp8 cache gets them saturated to +-fp8_max first, as `attention.store`."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots + t)
    c = tl.arange(0, BLOCK)
    mask = c < ROW
    k = tl.load(k_ptr + t * stride_kt + c, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + c, mask=mask)
    if FP8_CACHE:
        k = tl.clamp(k.to(tl.float32), -fp8_max, fp8_max)
        v = tl.clamp(v.to(tl.float32), -fp8_max, fp8_max)
    tl.store(k_cache + slot * stride_kc + c, k.to(k_cache.dtype.element_ty), mask=mask)
    tl.store(v_cache + slot * stride_vc + c, v.to(v_cache.dtype.element_ty), mask=mask)
