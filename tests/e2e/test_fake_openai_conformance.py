"""The fake model's wire format, checked by the official `openai` Python SDK.

Whatever the SDK parses, a real client parses: plain completions, streamed
content, streamed tool-call deltas (id and name first, then argument
fragments), the answer after a tool result, and provider errors.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import FakeLLM

pytestmark = pytest.mark.e2e

TOOLS = [{"type": "function", "function": {
    "name": "tickets__list_tickets", "description": "List tickets",
    "parameters": {"type": "object", "properties": {"updated_since": {"type": "string"}},
                   "required": ["updated_since"]}}}]


def client(llm: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key="fake-key", max_retries=0, timeout=10)


def test_sdk__plain_completion_parses(llm: FakeLLM) -> None:
    done = client(llm).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi there"}])
    assert done.choices[0].message.content == "Echo: hi there"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.total_tokens > 0


def test_sdk__streamed_content_and_usage(llm: FakeLLM) -> None:
    chunks = list(client(llm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three four five six"}], stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: one two three four five six"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, "content arrives in pieces"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_sdk__streamed_tool_call_deltas_assemble(llm: FakeLLM) -> None:
    args = {"updated_since": "2026-11-30"}
    message = f"[[tool:tickets__list_tickets:{json.dumps(args)}]] summarise"
    sdk = client(llm)
    with sdk.chat.completions.stream(model="m", messages=[{"role": "user", "content": message}],
                                     tools=TOOLS) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "tickets__list_tickets"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == args  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"
    # the arguments really came in fragments, keyed by index
    raw = list(sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": message}],
                                           tools=TOOLS, stream=True))  # type: ignore[arg-type]
    pieces = [tc for c in raw if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(pieces) >= 2 and pieces[0].id and pieces[0].function.name == "tickets__list_tickets"
    assert all(p.index == 0 for p in pieces)
    # then the answer quotes the tool's result
    after = sdk.chat.completions.create(model="m", messages=[
        {"role": "user", "content": message},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps('{"tickets": ["TCK-101"]}')},
    ])
    assert after.choices[0].message.content == 'Done: {"tickets": ["TCK-101"]}'


def test_sdk__provider_errors_raise_the_sdks_own_exceptions(llm: FakeLLM) -> None:
    with pytest.raises(openai.RateLimitError):
        client(llm).chat.completions.create(model="m", messages=[{"role": "user", "content": "[[fail:429]]"}])
    with pytest.raises(openai.InternalServerError):
        client(llm).chat.completions.create(model="m", messages=[{"role": "user", "content": "[[fail:500]]"}])
