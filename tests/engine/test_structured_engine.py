"""Structured outputs in the engine: constrained answers validate (jsonschema, re) under
continuous batching, chunked prefill, preemption by recompute and n > 1; seeded constrained
sampling gives the same tokens in a tight engine (preempting, tiny chunks) as in a roomy one;
unconstrained neighbours are untouched; the grammar's end finishes with "stop"; grammars are
compiled once per constraint; a constraint the library refuses is an InvalidRequestError."""

import json
import re

import jsonschema
import pytest

from herd.engine.errors import InvalidRequestError
from herd.engine.llm import LLM
from herd.engine.sampling_params import SamplingParams
from herd.engine.sampling_params import StructuredOutputsParams as Constraint

SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999},
        "kind": {"enum": ["cat", "dog", "fox"]},
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
    },
    "required": ["id", "kind", "name", "ok"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,5}-[0-9]{3}"
PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog. herd serves Llama models with high",
    "A request arrives at the gateway, which chooses a replica; the replica schedules it with "
    "continuous batching over a paged key-value cache.",
    "café 東京 😀",
]


def params(constraint: Constraint | None, seed: int, **kw) -> SamplingParams:
    return SamplingParams(
        temperature=1.0, seed=seed, max_tokens=80, structured_outputs=constraint, **kw
    )


def workload() -> tuple[list[str], list[SamplingParams]]:
    """Constrained and free requests mixed, several with n > 1."""
    prompts, ps = [], []
    for i, prompt in enumerate(PROMPTS * 2):
        constraint = [Constraint(json=SCHEMA), Constraint(regex=REGEX), None][i % 3]
        prompts.append(prompt)
        ps.append(params(constraint, seed=i, n=1 + i % 3))
    return prompts, ps


def check(outputs, ps) -> None:
    for out, p in zip(outputs, ps, strict=True):
        for c in out.outputs:
            spec = p.structured_outputs
            if spec is None:
                continue
            assert c.finish_reason == "stop", c.text
            if spec.json is not None:
                jsonschema.validate(json.loads(c.text), SCHEMA)
            else:
                assert re.fullmatch(REGEX, c.text), c.text


@pytest.fixture(scope="module")
def roomy(tiny_model_dir):
    return LLM(str(tiny_model_dir), dtype="float32", device="cpu")


def test_constrained_answers_validate_in_a_mixed_batch(roomy):
    prompts, ps = workload()
    outputs = roomy.generate(prompts, ps)
    check(outputs, ps)
    # the free neighbours sample exactly as they do alone
    for prompt, p, out in zip(prompts, ps, outputs, strict=True):
        if p.structured_outputs is None:
            alone = roomy.generate(prompt, p)[0]
            assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in out.outputs]


def test_preemption_and_chunked_prefill_keep_matcher_state(roomy, tiny_model_dir):
    prompts, ps = workload()
    expected = [[c.token_ids for c in o.outputs] for o in roomy.generate(prompts, ps)]
    tight = LLM(
        str(tiny_model_dir),
        dtype="float32",
        device="cpu",
        block_size=4,
        num_kv_blocks=36,
        max_num_batched_tokens=8,
        max_num_seqs=6,
    )
    outputs = tight.generate(prompts, ps)
    assert tight.stats()["preemptions"] > 0
    check(outputs, ps)
    assert [[c.token_ids for c in o.outputs] for o in outputs] == expected


def test_grammar_end_is_stop_even_with_ignore_eos(roomy):
    p = SamplingParams(
        temperature=0,
        max_tokens=50,
        ignore_eos=True,
        structured_outputs=Constraint(choice=("ab", "c")),
    )
    out = roomy.generate("x", p)[0].outputs[0]
    assert out.text in ("ab", "c") and out.finish_reason == "stop"


def test_compiled_once_per_constraint(tiny_model_dir):
    llm = LLM(str(tiny_model_dir), dtype="float32", device="cpu")
    structured = llm.engine.structured
    ps = [params(Constraint(json=dict(SCHEMA)), seed=s) for s in range(3)]
    llm.generate(["a", "b", "c"], ps)
    assert (structured.compiles, structured.cache_hits) == (1, 2)


@pytest.mark.parametrize(
    "constraint, words",
    [
        (Constraint(json={"type": "nope"}, param="guided_json"), "nope"),
        (Constraint(regex="[a-", param="guided_regex"), "regex"),
        (Constraint(grammar="root ::= undefined_rule", param="guided_grammar"), "undefined_rule"),
    ],
)
def test_refused_constraint_names_the_field(roomy, constraint, words):
    with pytest.raises(InvalidRequestError) as info:
        roomy.engine.add_request("bad", "x", SamplingParams(structured_outputs=constraint))
    assert info.value.param == constraint.param and words in info.value.message
    assert not roomy.engine.has_unfinished_requests()


def test_two_constraints_or_min_tokens_are_refused():
    with pytest.raises(InvalidRequestError):
        SamplingParams(structured_outputs=Constraint(regex="a", choice=("a",)))
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(min_tokens=2, structured_outputs=Constraint(regex="a+"))
    assert info.value.param == "min_tokens"
