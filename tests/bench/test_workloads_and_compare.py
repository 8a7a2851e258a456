"""Workloads (seeded, hashed, salted, length distributions, JSONL) and compare with repeats."""

import json
import re

import numpy as np
import pytest

from herd.bench.compare import compare_runs, render
from herd.bench.config import BenchConfigError, Workload
from herd.bench.tokenizer import load_tokenizer
from herd.bench.workloads import build_dataset, sample_lengths

TOK = load_tokenizer()  # the word approximation: no files needed


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert sample_lengths(rng, 100, 3, "fixed", 0.5) == [100, 100, 100]
    uniform = sample_lengths(rng, 100, 2000, "uniform", 0.5)
    assert (
        min(uniform) >= 50
        and max(uniform) <= 150
        and np.mean(uniform) == pytest.approx(100, rel=0.05)
    )
    normal = sample_lengths(rng, 100, 2000, "normal", 0.2)
    assert np.std(normal) == pytest.approx(20, rel=0.15) and min(normal) >= 1


def test_dataset_is_seeded_hashed_and_salted_per_run():
    cfg = Workload(input_len=12, output_len=4, length_dist="uniform", seed=7)
    a, b = build_dataset(cfg, TOK, 10), build_dataset(cfg, TOK, 10)
    assert a.content_hash == b.content_hash and a.salt != b.salt
    assert a.conversation(0).turns[0].prompt != b.conversation(0).turns[0].prompt
    assert build_dataset(Workload(seed=8), TOK, 10).content_hash != a.content_hash
    same = build_dataset(Workload(unique=False), TOK, 3)
    assert same.conversation(1) == same.pool[1]
    # Cycling past the pool re-salts, so a long duration run never repeats a prompt.
    assert same.conversation(4).turns[0].prompt != same.conversation(1).turns[0].prompt
    prompt = a.pool[0].turns[0]
    assert TOK.count(prompt.prompt) == prompt.input_tokens


def test_each_request_has_its_own_salt_unless_prefixes_are_shared_on_purpose():
    synthetic = build_dataset(Workload(input_len=12, seed=3), TOK, 20)
    # The 8-hex-digit tag opens each prompt, so no two share a first KV block. (Comparing fewer
    # characters than the tag made this test flaky: 3 hex digits collide in ~5% of runs.)
    tags = {synthetic.conversation(i).turns[0].prompt[:10] for i in range(20)}
    assert len(tags) == 20 and all(re.fullmatch(r"\[[0-9a-f]{8}\]", t) for t in tags)
    shared = build_dataset(Workload(kind="shared-prefix", num_groups=2, prefix_len=32), TOK, 8)
    prompts = [shared.conversation(i).turns[0].prompt for i in range(8)]
    assert len({p[:40] for p in prompts}) <= 2  # one tag a run keeps the groups' prefixes shared


def test_jsonl_dataset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "hello there", "max_tokens": 5},
            {"messages": [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "x"},
                          {"role": "user", "content": "d"}]}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ds = build_dataset(Workload(kind="jsonl", dataset=str(path), output_len=9), TOK, 1)
    assert [len(c.turns) for c in ds.pool] == [1, 2]
    assert ds.pool[0].turns[0].output_tokens == 5 and ds.pool[1].turns[0].output_tokens == 9
    with pytest.raises(BenchConfigError, match="cannot read"):
        build_dataset(Workload(kind="jsonl", dataset=str(tmp_path / "missing")), TOK, 1)


def fake_run(label, thr_repeats, gpus=1):
    level = {
        "load": {"kind": "concurrency", "value": 8},
        "requests": {"ok": 10, "failed": 0},
        "throughput": {"output_tokens_per_s": float(np.mean(thr_repeats)), "requests_per_s": 1.0},
        "ttft_ms": {"p50": 100.0, "p99": 200.0}, "tpot_ms": {"p50": 10.0}, "itl_ms": {"p50": 10.0},
        "e2e_ms": {"p50": 1000.0, "p99": 2000.0}, "goodput": {"requests_per_s": None},
        "cost": {"usd_per_million_output_tokens": None},
        "samples": {"ttft_ms": [100.0] * 10, "tpot_ms": [10.0] * 10, "e2e_ms": [1000.0] * 10},
        "repeats": [{"throughput.output_tokens_per_s": t} for t in thr_repeats],
    }  # fmt: skip
    return {"label": label, "gpus": gpus, "levels": [level]}


def test_compare_ratios_noise_and_scaling():
    result = compare_runs(
        [fake_run("2gpu", [1000, 1010, 990], 2), fake_run("4gpu", [1800, 1810, 1790], 4)]
    )
    cell = result["levels"][0]["metrics"]["out tok/s"][1]
    assert cell["ratio"] == pytest.approx(1.8) and cell["beyond_noise"] == "yes"
    assert result["levels"][0]["scaling_efficiency"] == pytest.approx([1.0, 0.9])
    ttft = result["levels"][0]["metrics"]["TTFT p50 ms"][1]
    assert ttft["ratio"] == 1.0 and ttft["beyond_noise"] == "no"
    assert "scaling efficiency" in render(result)


def test_compare_pools_same_label_as_repeats():
    runs = [fake_run("A", [100]), fake_run("A", [104]), fake_run("B", [101]), fake_run("B", [103])]
    pooled = compare_runs(runs, pool=True)
    assert pooled["labels"] == ["A", "B"] and pooled["repeats"] == [2, 2]
    assert pooled["levels"][0]["metrics"]["out tok/s"][1]["beyond_noise"] == "no"
    assert compare_runs(runs)["labels"] == ["A", "A", "B", "B"]
