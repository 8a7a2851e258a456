"""What the gateway reads from a request body: prompt forms and the token reservation."""

import json

import pytest

from herd.gateway.errors import GatewayError
from herd.gateway.request_info import parse_request


def info(body: dict, endpoint: str = "completions"):
    return parse_request(endpoint, json.dumps({"model": "m", **body}).encode(), {}, 64)


@pytest.mark.parametrize(
    "prompt, completions",
    [("hello", 1), ([1, 2, 3], 1), (["a", "b", "c"], 3), ([[1, 2], [3]], 2)],
)
def test_prompt_forms_and_reservation(prompt, completions):
    got = info({"prompt": prompt, "max_tokens": 10, "n": 2})
    assert got.completions == 2 * completions
    # The reservation covers every completion of every prompt, so a burst cannot overshoot.
    assert got.reserve_tokens(4.0, 16) >= 2 * completions * 10


@pytest.mark.parametrize(
    "prompt, param",
    [
        ([], "prompt"),
        ([[]], "prompt[0]"),
        ([True], "prompt"),
        (["a", 1], "prompt[1]"),
        ({"x": 1}, "prompt"),
        ([1, -2], "prompt"),
        ([[1], [-1]], "prompt[1]"),
    ],
)
def test_bad_prompt_forms_are_400_naming_the_param_as_the_replica_does(prompt, param):
    with pytest.raises(GatewayError) as err:
        info({"prompt": prompt})
    assert err.value.status == 400 and err.value.param == param
