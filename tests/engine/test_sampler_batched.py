"""The sampler's batched transforms (one device pass for all rows, one read back per step):
repetition penalty equal to transformers' processor, frequency / presence penalties by OpenAI's
formula, min_tokens masks, and top logprobs with ranks, row by row in a mixed batch."""

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from herd.engine.request import Request
from herd.engine.sampler import Sampler, _apply_penalties, _read_back
from herd.engine.sampling_params import SamplingParams

VOCAB = 50


def _req(params: SamplingParams, prompt: list[int], output: list[int]) -> Request:
    r = Request("r", "r", 0, prompt, params, None, 64)
    r.all_token_ids = prompt + output
    return r


def test_penalties_of_a_mixed_batch_match_the_references():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, VOCAB, generator=g) * 3
    reqs = [
        _req(SamplingParams(repetition_penalty=1.7), [1, 2, 3, 2], [7, 7]),
        _req(SamplingParams(), [4, 5], [6]),  # untouched
        _req(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), [9], [3, 3, 3, 8]),
        _req(SamplingParams(repetition_penalty=0.8, frequency_penalty=-1.0), [5], [5, 11]),
    ]
    got = _apply_penalties(logits, reqs, [0, 2, 3])
    want = logits.clone()
    for i in (0, 3):
        p = reqs[i].params.repetition_penalty
        ids = torch.tensor([reqs[i].all_token_ids])
        want[i : i + 1] = RepetitionPenaltyLogitsProcessor(p)(ids, want[i : i + 1].clone())
    for i in (2, 3):
        p = reqs[i].params
        counts = torch.bincount(torch.tensor(reqs[i].output_token_ids), minlength=VOCAB).float()
        want[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    torch.testing.assert_close(got, want)


def test_min_tokens_and_logprobs_row_by_row():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, VOCAB, generator=g)
    logits[1, 2] = 30.0  # row 1 would pick EOS (2) but min_tokens forbids it
    reqs = [
        _req(SamplingParams(temperature=0, logprobs=3), [1], []),
        _req(SamplingParams(temperature=0, min_tokens=2, logprobs=0), [1], [4]),
        _req(SamplingParams(temperature=0), [1], []),
        _req(
            SamplingParams(temperature=0, logprobs=5, min_tokens=1),
            [1],
            [],
        ),
    ]
    out = Sampler(eos_token_ids=[2], seed=0)(logits, reqs)
    masked = logits.clone()
    masked[[1, 3], 2] = float("-inf")
    assert out.token_ids == masked.argmax(1).tolist()
    raw = torch.log_softmax(logits, -1)
    for i, k in ((0, 3), (1, 0), (3, 5)):
        tok = out.token_ids[i]
        vals, ids = raw[i].topk(k)
        want = {
            int(t): (float(v), r) for r, (t, v) in enumerate(zip(ids, vals, strict=True), start=1)
        }
        want.setdefault(tok, (float(raw[i, tok]), int((raw[i] > raw[i, tok]).sum()) + 1))
        got = {t: (lp.logprob, lp.rank) for t, lp in out.logprobs[i].items()}
        assert {t: r for t, (_, r) in got.items()} == {t: r for t, (_, r) in want.items()}
        for t, (v, _) in want.items():  # logits minus their logsumexp: float32 ulps apart
            assert got[t][0] == pytest.approx(v, rel=1e-6, abs=1e-6)
        assert out.sampled_logprobs[i] == pytest.approx(float(raw[i, tok]))
    assert out.logprobs[2] is None
    assert out.logprobs[1][out.token_ids[1]].rank > 1  # the forced token is not the raw top one


def test_ranks_read_with_the_ids_equal_ranks_computed_afterwards():
    """The GPU's way (every asked row's rank in the one read back) and the CPU's (a rank only
    for a token outside its top k, computed after the read) give the same logprobs."""
    g = torch.Generator().manual_seed(2)
    raw = torch.randn(5, VOCAB, generator=g)
    lse = torch.logsumexp(raw, -1)
    tokens = torch.tensor([0, 7, 3, 9, 1])  # mostly not the top tokens
    reqs = [_req(SamplingParams(logprobs=k), [1], []) for k in (0, 2, None, 4, 1)]
    now, later = _read_back(raw, lse, tokens, reqs, True), _read_back(raw, lse, tokens, reqs, False)
    assert now.token_ids == later.token_ids and now.sampled_logprobs == later.sampled_logprobs

    def ranked(out):  # Logprob compares as a float: spell the ranks out
        return [None if e is None else [(t, float(v), v.rank) for t, v in e.items()]
                for e in out.logprobs]  # fmt: skip

    assert ranked(now) == ranked(later)
    assert [lp.rank for lp in now.logprobs[0].values()] == [int((raw[0] > raw[0, 0]).sum()) + 1]


@pytest.mark.parametrize("rows,vocab", [(64, 16384), (3, 37), (1, 5)])
def test_native_argmax_and_logsumexp_are_torchs(rows, vocab):
    from herd.engine.sampler import argmax_logsumexp

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(rows, vocab, generator=g) * 10
    logits[0, vocab // 2] = logits[0, vocab - 1] = 1e4  # a tie: the first index wins, as torch's
    best, lse = argmax_logsumexp(logits)
    assert best.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), rtol=1e-6, atol=1e-5)
