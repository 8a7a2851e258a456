"""`Sampler`: next tokens from logits, one row per sampling request.

Order of logit transforms: logit_bias, repetition penalty (prompt + output), frequency and
presence penalties (output), min_tokens (stop tokens masked), then temperature, top-k, top-p, min-p.
Greedy rows take the argmax. Sampled rows draw by the exponential race
(argmax p / E, E ~ Exp(1)), exact for the categorical distribution. The noise is a counter-based
hash of (row key, token id) computed on the logits' device for all rows at once; a seeded row's
key is (seed, absolute position) alone, so its tokens do not depend on the batch, on preemption,
or on where a stream is resumed. Logprobs are those of the raw model
distribution (before any transform), as in vLLM. Per-row settings reach the device by
asynchronous copies, every transform runs over all its rows at once, and the step's results
(ids, logprobs, top logprobs and ranks) come back in one device-to-host read.
"""

import ctypes
from dataclasses import dataclass

import torch

from herd.engine.native_build import load_library
from herd.engine.outputs import Logprob
from herd.engine.request import Request

MASK_MIN = float("-inf")
# splitmix64's constants as signed int64 (torch has no uint64 arithmetic; products wrap alike).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


@dataclass
class SamplerOutput:
    """The sampler's answer for one step, one row per sampling request: the chosen token, its
    logprob under the raw distribution, and the top logprobs when the request asked for them."""

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: sampled token + top-k, when asked
    sampled_logprobs: list[float]  # logprob of each sampled token (raw distribution)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, elementwise on int64."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def noise_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One key per row from (seed, absolute position): the whole identity of a seeded draw."""
    return _mix(_mix(seeds * _GOLDEN + 1) + positions * _GOLDEN)


def exponential_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] Exp(1) noise, entry (r, t) a function of (keys[r], t) only, computed where
    `keys` live: uniform from 24 hash bits (never 0 or 1), then -log."""
    ids = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _shr(_mix(keys[:, None] * _GOLDEN + ids), 40)
    return -torch.log((bits.float() + 0.5) * (1.0 / (1 << 24)))


class Sampler:
    """Chooses the next token of every sampling row. Order: logit_bias, penalties (presence,
    frequency, repetition), min_tokens, then temperature, top-k, top-p, min-p; greedy rows take
    the argmax. Random rows draw by the exponential race with noise seeded by (seed, absolute
    position), so a seeded request gives the same tokens in any batch and after preemption."""

    def __init__(self, eos_token_ids: list[int], seed: int = 0) -> None:
        self.eos_token_ids = eos_token_ids
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, reqs: list[Request]) -> SamplerOutput:
        raw = logits
        best, lse = argmax_logsumexp(raw)  # the raw distribution's argmax and normaliser
        rows = _Rows.of(reqs)
        logits = _apply_logit_bias(logits, reqs, rows.bias)
        logits = _apply_penalties(logits, reqs, rows.penalty)
        logits = self._apply_min_tokens(logits, reqs, rows.min_tokens)
        tokens = best if logits is raw else logits.argmax(dim=-1)
        sampled_rows = rows.sampled
        if sampled_rows:
            idx = to_device(sampled_rows, torch.long, logits.device)
            drawn = self._draw(logits[idx], [reqs[i] for i in sampled_rows])
            tokens[idx] = drawn
        return _read_back(raw, lse, tokens, reqs)

    def _apply_min_tokens(
        self, logits: torch.Tensor, reqs: list[Request], rows: list[int]
    ) -> torch.Tensor:
        """Stop tokens of rows still under min_tokens set to -inf, all rows in one index_put."""
        if not rows:
            return logits
        row_idx, token_idx = [], []
        for i in rows:
            stops = list(reqs[i].params.stop_token_ids or [])
            if not reqs[i].params.ignore_eos:
                stops += self.eos_token_ids
            row_idx += [i] * len(stops)
            token_idx += stops
        if not row_idx:
            return logits
        dev = logits.device
        logits = logits.clone()
        index = (to_device(row_idx, torch.long, dev), to_device(token_idx, torch.long, dev))
        logits.index_put_(index, torch.full((), MASK_MIN, dtype=logits.dtype, device=dev))
        return logits

    def _draw(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        temps = to_device([r.params.temperature for r in reqs], logits.dtype, logits.device)
        logits = logits / temps[:, None]
        logits = _top_k(logits, [r.params.top_k for r in reqs])
        logits = _top_p(logits, [r.params.top_p for r in reqs])
        probs = torch.softmax(logits, dim=-1)
        probs = _min_p(probs, [r.params.min_p for r in reqs])
        keys = self._row_keys(reqs).to(logits.device, non_blocking=True)
        return (probs / exponential_noise(keys, logits.shape[1])).argmax(dim=-1)

    def _row_keys(self, reqs: list[Request]) -> torch.Tensor:
        """Unseeded rows: fresh keys from the engine's generator (one call for the batch);
        seeded rows: their (seed, position) key."""
        keys = torch.randint(-(1 << 62), 1 << 62, (len(reqs),), generator=self.generator)
        seeded = [i for i, r in enumerate(reqs) if r.seed is not None]
        if seeded:
            # Any Python int seed, folded into int64 (two's complement, as the hash works).
            wrap = [(reqs[i].seed + (1 << 63)) % (1 << 64) - (1 << 63) for i in seeded]
            seeds = torch.tensor(wrap, dtype=torch.int64)
            positions = torch.tensor([reqs[i].num_tokens for i in seeded], dtype=torch.int64)
            keys[seeded] = noise_keys(seeds, positions)
        return keys


@dataclass
class _Rows:
    """Which rows of a step need which transform, found in one pass over the batch so a
    transform nobody asked for costs nothing per row."""

    sampled: list[int]  # not greedy
    penalty: list[int]  # repetition / frequency / presence penalty
    min_tokens: list[int]  # stop tokens still masked
    bias: list[int]  # logit_bias

    @classmethod
    def of(cls, reqs: list[Request]) -> "_Rows":
        rows = cls([], [], [], [])
        for i, r in enumerate(reqs):
            p = r.params
            if p.temperature != 0:
                rows.sampled.append(i)
            if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
                rows.penalty.append(i)
            if r.num_output_tokens < p.min_tokens:
                rows.min_tokens.append(i)
            if p.logit_bias:
                rows.bias.append(i)
        return rows


def _apply_logit_bias(logits: torch.Tensor, reqs: list[Request], rows: list[int]) -> torch.Tensor:
    """Add each row's logit_bias (token id -> bias) to its logits, all rows in one index_put."""
    if not rows:
        return logits
    row_idx, token_idx, bias = [], [], []
    for i in rows:
        ids, values = reqs[i].params.logit_bias_lists
        row_idx += [i] * len(ids)
        token_idx += ids
        bias += values
    dev = logits.device
    logits = logits.clone()
    logits.index_put_(
        (to_device(row_idx, torch.long, dev), to_device(token_idx, torch.long, dev)),
        to_device(bias, logits.dtype, dev),
        accumulate=True,
    )
    return logits


def _top_k(logits: torch.Tensor, ks: list[int]) -> torch.Tensor:
    vocab = logits.shape[1]
    if all(k <= 0 or k >= vocab for k in ks):
        return logits
    k = to_device([k if 0 < k < vocab else vocab for k in ks], torch.long, logits.device)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, MASK_MIN)


def _top_p(logits: torch.Tensor, ps: list[float]) -> torch.Tensor:
    if all(p >= 1.0 for p in ps):
        return logits
    p = to_device(ps, logits.dtype, logits.device)[:, None]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the mass before it already reaches p (the top token always stays).
    drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, MASK_MIN)


def _min_p(probs: torch.Tensor, min_ps: list[float]) -> torch.Tensor:
    if all(m <= 0 for m in min_ps):
        return probs
    m = to_device(min_ps, probs.dtype, probs.device)[:, None]
    return probs.masked_fill(probs < m * probs.max(dim=-1, keepdim=True).values, 0.0)


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-row values as a device tensor without waiting for the device: built on the host and
    copied asynchronously (`torch.tensor(..., device=cuda)` would synchronise the stream)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _apply_penalties(logits: torch.Tensor, reqs: list[Request], rows: list[int]) -> torch.Tensor:
    """Repetition penalty over prompt + output tokens (as transformers), then frequency and
    presence penalties over output counts (OpenAI's formula), for all penalised rows at once:
    the token lists are flattened on the host, the counts built on the device."""
    if not rows:
        return logits
    vocab, dev = logits.shape[1], logits.device
    seen_r, seen_t, out_r, out_t = [], [], [], []
    for j, i in enumerate(rows):
        r = reqs[i]
        if r.params.repetition_penalty != 1.0:
            seen = [t for t in set(r.all_token_ids) if t < vocab]
            seen_r += [j] * len(seen)
            seen_t += seen
        if r.params.frequency_penalty or r.params.presence_penalty:
            out_r += [j] * r.num_output_tokens
            out_t += r.output_token_ids
    params = [reqs[i].params for i in rows]
    pen = to_device([p.repetition_penalty for p in params], logits.dtype, dev)[:, None]
    freq = to_device([p.frequency_penalty for p in params], logits.dtype, dev)[:, None]
    pres = to_device([p.presence_penalty for p in params], logits.dtype, dev)[:, None]
    index = to_device(rows, torch.long, dev)
    x = logits[index]
    if seen_r:
        seen_mask = torch.zeros_like(x, dtype=torch.bool)
        seen_idx = (to_device(seen_r, torch.long, dev), to_device(seen_t, torch.long, dev))
        seen_mask.index_put_(seen_idx, torch.ones((), dtype=torch.bool, device=dev))
        x = torch.where(seen_mask, torch.where(x > 0, x / pen, x * pen), x)
    if out_r:
        counts = torch.zeros_like(x)
        out_idx = (to_device(out_r, torch.long, dev), to_device(out_t, torch.long, dev))
        counts.index_put_(out_idx, torch.ones((), dtype=x.dtype, device=dev), accumulate=True)
        x = x - freq * counts - pres * (counts > 0)
    logits = logits.clone()
    logits[index] = x
    return logits


def argmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's argmax (the first, as torch's) and log-sum-exp. On CPU float32 one native
    pass (cpu_sampling.cpp: 0.9 ms of torch ops for 64 rows of 16k, measured ~0.1 ms)."""
    lib = load_library("cpu_sampling.cpp") if logits.device.type == "cpu" else None
    if lib is None or logits.dtype != torch.float32 or not logits.is_contiguous():
        return logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1)
    rows, vocab = logits.shape
    best = torch.empty(rows, dtype=torch.long)
    lse = torch.empty(rows)
    ptr = ctypes.c_void_p
    lib.herd_argmax_logsumexp(
        ptr(logits.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(vocab),
        ptr(best.data_ptr()), ptr(lse.data_ptr()), ctypes.c_int(torch.get_num_threads()),
    )  # fmt: skip
    return best, lse


def _read_back(
    raw: torch.Tensor,
    lse: torch.Tensor,
    tokens: torch.Tensor,
    reqs: list[Request],
    ranks_now: bool | None = None,
) -> SamplerOutput:
    """The step's one device-to-host read: sampled ids, their logprobs (raw logits minus their
    row's log-sum-exp) and, for rows that asked, the top logprobs, packed into one float64
    tensor (ids are exact in it). On a GPU every asked row's rank rides along (a pass over the
    vocabulary costs microseconds there, a second read far more); on the CPU, where reading
    costs nothing, only a row whose token is outside its top k computes its rank afterwards (a
    vocabulary pass per row measured ~1 ms on 2 cores)."""
    chosen = raw.gather(1, tokens[:, None]).squeeze(1) - lse
    parts = [tokens.double(), chosen.double()]
    asked = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
    kmax = min(max([reqs[i].params.logprobs for i in asked] or [0]), raw.shape[1])
    ranks_now = raw.is_cuda if ranks_now is None else ranks_now
    if asked:
        idx = slice(None) if len(asked) == len(reqs) else to_device(asked, torch.long, raw.device)
        sub = raw[idx] - lse[idx, None]  # the asked rows' logprobs
        vals, ids = sub.topk(kmax)
        parts += [vals.double().flatten(), ids.double().flatten()]
        if ranks_now:
            parts.append(((sub > chosen[idx, None]).sum(dim=1) + 1).double())
    flat = torch.cat(parts).tolist()
    n, a = len(reqs), len(asked)
    token_ids = [int(t) for t in flat[:n]]
    logprobs: list[dict[int, float] | None] = [None] * n
    vals_at, ids_at, ranks_at = 2 * n, 2 * n + a * kmax, 2 * n + 2 * a * kmax
    for j, i in enumerate(asked):
        k = min(reqs[i].params.logprobs, kmax)
        row_vals = flat[vals_at + j * kmax : vals_at + j * kmax + k]
        row_ids = flat[ids_at + j * kmax : ids_at + j * kmax + k]
        pairs = zip(row_ids, row_vals, strict=True)
        entry = {int(t): Logprob(v, rank) for rank, (t, v) in enumerate(pairs, 1)}
        tok = token_ids[i]
        if tok not in entry:
            rank = flat[ranks_at + j] if ranks_now else (raw[i] > raw[i, tok]).sum() + 1
            entry[tok] = Logprob(flat[n + i], int(rank))
        logprobs[i] = entry
    return SamplerOutput(token_ids, logprobs, flat[n : 2 * n])


def rank_logprobs(logprobs: torch.Tensor, token: int, k: int) -> dict[int, float]:
    """The chosen token's logprob and the top k, most likely first, each with its rank."""
    entry: dict[int, float] = {}
    if k > 0:
        vals, ids = logprobs.topk(min(k, logprobs.shape[0]))
        for rank, (t, v) in enumerate(zip(ids.tolist(), vals.tolist(), strict=True), start=1):
            entry[t] = Logprob(v, rank)
    if token not in entry:
        rank = int((logprobs > logprobs[token]).sum()) + 1
        entry[token] = Logprob(float(logprobs[token]), rank)
    return entry
