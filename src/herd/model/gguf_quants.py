"""Dequantization of GGUF's block formats to float32, vectorised in numpy over all blocks at once
(the layouts are ggml's: ggml-common.h). Each function takes the raw bytes as a uint8 array of
shape [n_blocks, bytes_per_block] and returns [n_blocks, values_per_block]. numpy, not torch:
torch's uint8 bit operations measured 40x slower here (150 ms vs 3.7 ms for one Q4_1 matrix)."""

from collections.abc import Callable

import numpy as np

QK = 32  # values per block of the simple formats
QK_K = 256  # values per super-block of the k-quants

# type name -> (values per block, bytes per block)
BLOCK_SIZES = {
    "Q4_0": (QK, 18),
    "Q4_1": (QK, 20),
    "Q5_0": (QK, 22),
    "Q5_1": (QK, 24),
    "Q8_0": (QK, 34),
    "Q4_K": (QK_K, 144),
    "Q5_K": (QK_K, 176),
    "Q6_K": (QK_K, 210),
}


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian float16 fields ([n, 2] bytes) as float32 [n, 1]."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] values: low nibbles first, then high (ggml's order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(qh: np.ndarray, count: int) -> np.ndarray:
    """The low `count` bits of little-endian bytes [n, count/8], bit i of the field at column i."""
    shifts = np.arange(8, dtype=np.uint8)
    return ((qh[..., None] >> shifts) & 1).reshape(qh.shape[0], count)


def q8_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)


def q4_0(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).astype(np.float32) - 8)


def q4_1(b: np.ndarray) -> np.ndarray:
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]).astype(np.float32) + _f16(b[:, 2:4])


def q5_0(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 6:]) | (_bits(b[:, 2:6], QK) << 4)
    return _f16(b[:, :2]) * (q.astype(np.float32) - 16)


def q5_1(b: np.ndarray) -> np.ndarray:
    q = _nibbles(b[:, 8:]) | (_bits(b[:, 4:8], QK) << 4)
    return _f16(b[:, :2]) * q.astype(np.float32) + _f16(b[:, 2:4])


def _k_scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K: 8 six-bit scales and 8 six-bit mins packed in 12 bytes (get_scale_min_k4)."""
    lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([lo & 63, (hi & 0x0F) | ((lo >> 6) << 4)], axis=-1)
    mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return scales.astype(np.float32), mins.astype(np.float32)


def _k_apply(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """value = d * scale[sub] * q - dmin * min[sub] over 8 sub-blocks of 32."""
    n = b.shape[0]
    scales, mins = _k_scales_mins(b[:, 4:16])
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    out = (d * scales)[..., None] * q.reshape(n, 8, 32).astype(np.float32)
    return (out - (dmin * mins)[..., None]).reshape(n, QK_K)


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 values: each 32-byte chunk gives 32 low nibbles then 32 high nibbles."""
    qs = qs.reshape(qs.shape[0], 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(qs.shape[0], QK_K)


def q4_k(b: np.ndarray) -> np.ndarray:
    return _k_apply(b, _k_nibbles(b[:, 16:]))


def q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    qh = b[:, 16:48]  # bit j of qh[l] is the fifth bit of value l of sub-block j
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((qh[:, None, :] >> shifts) & 1).reshape(n, QK_K)
    return _k_apply(b, _k_nibbles(b[:, 48:]) | (high << 4))


def q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 2, 32)  # two halves of 128 values, 64 bytes each
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)  # [n, 2, 4, 32]: values l, l+32, +64, +96
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    high = (qh >> shifts) & 3
    q = (low | (high << 4)).astype(np.float32) - 32
    return ((d * scales).reshape(n, 16, 1) * q.reshape(n, 16, 16)).reshape(n, QK_K)


DEQUANTIZERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Q4_0": q4_0,
    "Q4_1": q4_1,
    "Q5_0": q5_0,
    "Q5_1": q5_1,
    "Q8_0": q8_0,
    "Q4_K": q4_k,
    "Q5_K": q5_k,
    "Q6_K": q6_k,
}


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 array of `shape` (rows first) from the raw uint8 bytes of a block-quantized one."""
    _, nbytes = BLOCK_SIZES[type_name]
    blocks = np.ascontiguousarray(raw).reshape(-1, nbytes)
    return DEQUANTIZERS[type_name](blocks).reshape(shape)
