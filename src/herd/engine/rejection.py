"""Verification of speculative drafts: one target forward gives logits at the k+1 positions of each
sequence's k drafts; this module samples every position as the non-speculative engine would and
keeps the drafts up to the first disagreement.

Why that is the standard rejection-sampling rule. herd's proposers are deterministic (n-gram
lookup, a greedy draft model), so the proposal distribution q is one-hot on the draft d. The rule
accepts d with probability min(1, p(d) / q(d)) = p(d) and on rejection draws from
norm(max(0, p - q)) = p without d, renormalised. Drawing X ~ p at that position (with the
sampler's own transforms and noise) and accepting iff X == d does exactly that: P(accept) = p(d),
and X given X != d is p without d, renormalised; the bonus token after k acceptances is X at the
last position. So sampled outputs keep the target's distribution, greedy rows are token-identical
to no speculation, and a seeded row (noise keyed by seed and position) gives the same tokens with
or without speculation.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from herd.engine.outputs import TokenLogprobs
from herd.engine.request import Request, TokenCounts
from herd.engine.sampler import SamplerOutput

# (token, its top logprobs when asked, its logprob): one emitted token
Emitted = tuple[int, TokenLogprobs | None, float]


class RowView(TokenCounts):
    """A request as the sampler sees it at one draft position: its tokens plus the first `j`
    drafts, so penalties, min_tokens and the seeded noise's position are those the
    non-speculative engine would have at that point."""

    def __init__(self, req: Request, drafts: list[int]) -> None:
        self._req = req
        self.params = req.params
        self.seed = req.seed
        self.grammar = req.grammar
        self.request_id = req.request_id
        self.all_token_ids = req.all_token_ids + drafts if drafts else req.all_token_ids
        self.num_prompt_tokens = req.num_prompt_tokens


@dataclass
class Verified:
    """One sequence's verification: the tokens it emits (accepted drafts, then the target's own
    token at the first disagreement or the bonus token after the last draft) and how many drafts
    it proposed and had accepted."""

    emitted: list[Emitted]
    proposed: int
    accepted: int


def verify_drafts(
    reqs: list[Request],
    drafts: list[list[int]],
    logits: torch.Tensor,
    sample: Callable[[list[Any], torch.Tensor], SamplerOutput],
) -> list[Verified]:
    """`logits` has 1 + len(drafts[i]) rows per request, in order; `sample` is the runner's
    grammar-mask-then-sampler step. Returns each request's emitted tokens."""
    views = [
        RowView(r, d[:j]) for r, d in zip(reqs, drafts, strict=True) for j in range(len(d) + 1)
    ]
    result = sample(views, logits)
    out, row = [], 0
    for d in drafts:
        emitted: list[Emitted] = []
        for j in range(len(d) + 1):
            i = row + j
            emitted.append((result.token_ids[i], result.logprobs[i], result.sampled_logprobs[i]))
            if j == len(d) or result.token_ids[i] != d[j]:
                break
        out.append(Verified(emitted, len(d), len(emitted) - 1))
        row += len(d) + 1
    return out
