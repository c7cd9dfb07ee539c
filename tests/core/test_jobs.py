"""A job checks its own fields when a wire layer makes it: each rule has one home and one message."""

from __future__ import annotations

import pytest

from corral.errors import InvalidRequestError
from corral.jobs import ChatJob, EmbedJob, GenerateJob


@pytest.mark.parametrize("make", [lambda **kw: GenerateJob(model="m", **kw),
                                  lambda **kw: ChatJob(model="m", **kw)])
def test_top_logprobs_think_and_format(make) -> None:
    assert make(top_logprobs=20).top_logprobs == 20
    for bad in (-1, 21):
        with pytest.raises(InvalidRequestError, match="^top_logprobs must be between 0 and 20$"):
            make(top_logprobs=bad)
    assert make(think=" MAX ").think == "high" and make(think="Low").think == "low"
    assert make(think=False).think is False and make().think is None
    with pytest.raises(InvalidRequestError, match="invalid think value: 'extreme'"):
        make(think="extreme")
    assert make(format="").format is None and make(format=" JSON ").format == "json"
    assert make(format='{"type": "object"}').format == {"type": "object"}  # compat: schema as JSON text
    with pytest.raises(InvalidRequestError, match='^invalid format: expected "json" or a valid JSON schema'):
        make(format="yaml")


def test_raw_generate_refuses_template_system_and_context() -> None:
    GenerateJob(model="m", raw=True, prompt="p")
    words = "^raw mode does not support template, system, or context$"
    for kw in ({"template": "t"}, {"system": "s"}, {"context": [1]}):
        with pytest.raises(InvalidRequestError, match=words):
            GenerateJob(model="m", raw=True, **kw)


def test_dimensions() -> None:
    assert EmbedJob(model="m", inputs=[], dimensions=1).dimensions == 1
    for bad in (0, -3):
        with pytest.raises(InvalidRequestError, match="^dimensions must be a positive integer$"):
            EmbedJob(model="m", inputs=[], dimensions=bad)
