"""Tool calls, reasoning, logprobs and structured output on a REAL vLLM,
through the `gateway` binary, each compared field by field with the same
request sent to vLLM directly.

The engine (the `real_vllm_tools` fixture in conftest.py) is the CPU vLLM
serving the random-weight "tiny-llama" with `--enable-auto-tool-choice
--tool-call-parser hermes --reasoning-parser deepseek_v3` (docs/real-engine.md,
"Tool calls, reasoning, logprobs", says why these and how the random model is
driven: whitespace banned in JSON grammars, strict tools, a reasoning budget).
Everything runs at temperature 0 with a fixed seed, so the engine answers the
gateway and the direct client alike.

What the gateway does differently, on purpose, and so is compared loosely:
- tool-call and response ids are its own (vLLM's are random anyway);
- a non-streamed answer is assembled from the engine's stream, so a tool
  call's arguments are the model's raw text (vLLM re-serializes them with
  `json.dumps` when it answers non-streamed: equal as JSON), and a message of
  tool calls has `content: null` (vLLM writes `""` for named and required
  tool choices, `null` for auto; OpenAI writes `null`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import openai
import pytest
from conftest import REAL_MODEL, TENANT_KEY, RealVllm
from test_real_vllm import admin_usage, estimate_hist, gateway_metrics, http_post_json

SEED = 42
# The 22 whitespace-only token ids: a JSON grammar on the random model loops on
# them until max_tokens unless they are banned (docs/real-engine.md).
NO_WHITESPACE = {
    str(t): -100
    for t in (12, 13, 16, 35, 259, 268, 308, 418, 462, 539, 632, 795, 965, 1669, 1678, 3986,
              4706, 6756, 9651, 18884, 29871, 30004)
}
# `<tool_call>` / `</tool_call>` as one token each, rather than spelled in bytes.
TOOL_TAGS = {"32002": 5, "32003": 5}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(real_vllm_tools: RealVllm) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=real_vllm_tools.gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=180.0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def direct(real_vllm_tools: RealVllm) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{real_vllm_tools.url}/v1", api_key="unused", max_retries=0, timeout=180.0
    ) as c:
        yield c


def tool_call_args(max_tokens: int) -> dict:
    return {
        "model": REAL_MODEL,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
        "logit_bias": {**NO_WHITESPACE, **TOOL_TAGS},
    }


def streamed(c: openai.OpenAI, **args) -> dict:
    """One streamed chat answer as the SDK gives it: text, reasoning, tool
    calls reassembled by index, finish reason, usage, logprob entries."""
    out = {"content": "", "reasoning": "", "calls": {}, "finish": None, "usage": None, "logprobs": []}
    stream = c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args)
    for chunk in stream:
        if chunk.usage is not None:
            out["usage"] = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            out["content"] += delta.content or ""
            extra = delta.model_extra or {}
            assert "reasoning_content" not in extra, "vLLM 0.32 names reasoning `reasoning`"
            out["reasoning"] += extra.get("reasoning") or ""
            for call in delta.tool_calls or []:
                entry = out["calls"].setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            if choice.logprobs is not None and choice.logprobs.content:
                out["logprobs"] += [logprob_entry(e) for e in choice.logprobs.content]
            if choice.finish_reason is not None:
                out["finish"] = choice.finish_reason
    return out


def logprob_entry(e) -> tuple:
    return (e.token, e.logprob, tuple(e.bytes or ()), tuple((t.token, t.logprob, tuple(t.bytes or ())) for t in e.top_logprobs))


def without_ids(calls: dict) -> dict:
    return {i: {k: v for k, v in c.items() if k != "id"} for i, c in calls.items()}


# --- tool calls ---------------------------------------------------------------


def test_forced_tool_call_streamed_is_what_vllm_streams(real_vllm_tools, client, direct):
    args = tool_call_args(80)
    before_m = estimate_hist(gateway_metrics(real_vllm_tools))
    before_u = admin_usage(real_vllm_tools)
    gw = streamed(client, **args)
    ref = streamed(direct, **args)
    after_m = estimate_hist(gateway_metrics(real_vllm_tools))
    after_u = admin_usage(real_vllm_tools)
    print(f"\ngateway: {gw}\nvLLM:    {ref}")
    assert list(gw["calls"]) == [0]
    assert gw["calls"][0]["name"] == "get_weather"
    assert gw["calls"][0]["id"].startswith("chatcmpl-tool-")
    # The arguments, fragment for fragment concatenated, equal vLLM's; the
    # strict schema makes them JSON of the tool's parameters.
    assert without_ids(gw["calls"]) == without_ids(ref["calls"])
    assert set(json.loads(gw["calls"][0]["arguments"])) == {"city", "unit"}
    assert (gw["content"], gw["finish"], gw["usage"]) == (ref["content"], ref["finish"], ref["usage"])
    assert gw["finish"] == "stop"  # a named tool_choice ends with stop in vLLM
    # The prompt estimate (tools included) equals vLLM's prompt_tokens.
    seen = {k: after_m[k] - before_m[k] for k in after_m}
    assert seen == {"count": 1, "sum": 0.0, "zero": 1}, seen
    # The tool call's tokens are charged: exactly the completion tokens.
    assert after_u["completion_tokens"] - before_u["completion_tokens"] == gw["usage"][1]
    assert after_u["prompt_tokens"] - before_u["prompt_tokens"] == gw["usage"][0]


def test_forced_tool_call_cut_by_max_tokens_streams_like_vllm(client, direct):
    args = tool_call_args(30)
    gw = streamed(client, **args)
    ref = streamed(direct, **args)
    assert without_ids(gw["calls"]) == without_ids(ref["calls"])
    assert (gw["finish"], gw["usage"]) == ("length", ref["usage"])


def test_forced_tool_call_non_streamed(client, direct):
    args = tool_call_args(80)
    gw = client.chat.completions.create(**args)
    ref = direct.chat.completions.create(**args)
    g, r = gw.choices[0], ref.choices[0]
    assert g.finish_reason == r.finish_reason == "stop"
    assert [c.function.name for c in g.message.tool_calls] == [c.function.name for c in r.message.tool_calls]
    # Raw text from the stream against vLLM's json.dumps: equal as JSON.
    assert [json.loads(c.function.arguments) for c in g.message.tool_calls] == [
        json.loads(c.function.arguments) for c in r.message.tool_calls
    ]
    assert g.message.tool_calls[0].type == "function"
    assert g.message.content is None and r.message.content == ""
    assert (gw.usage.prompt_tokens, gw.usage.completion_tokens) == (ref.usage.prompt_tokens, ref.usage.completion_tokens)


def test_tool_call_history_is_passed_on_and_counted(real_vllm_tools, client):
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call-1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call-1", "content": "18 degrees, sunny"},
    ]
    engine_count = http_post_json(
        f"{real_vllm_tools.url}/tokenize", {"model": REAL_MODEL, "messages": messages, "tools": [WEATHER]}
    )["count"]
    before = estimate_hist(gateway_metrics(real_vllm_tools))
    r = client.chat.completions.create(
        model=REAL_MODEL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=2, temperature=0
    )
    after = estimate_hist(gateway_metrics(real_vllm_tools))
    assert r.usage.prompt_tokens == engine_count
    seen = {k: after[k] - before[k] for k in after}
    assert seen == {"count": 1, "sum": 0.0, "zero": 1}, seen


# --- reasoning ----------------------------------------------------------------


def reasoning_args(max_tokens: int, budget: int | None) -> dict:
    extra: dict = {"chat_template_kwargs": {"thinking": True}}
    if budget is not None:
        # The budget counts the 8 prompt tokens after the last `</s>` too.
        extra["thinking_token_budget"] = 8 + budget
    return {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": "Think, then answer: is the sea blue?"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
        "extra_body": extra,
    }


def test_reasoning_then_content_streamed_like_vllm(real_vllm_tools, client, direct):
    args = reasoning_args(12, 4)
    before = admin_usage(real_vllm_tools)
    gw = streamed(client, **args)
    after = admin_usage(real_vllm_tools)
    ref = streamed(direct, **args)
    print(f"\ngateway: {gw}\nvLLM:    {ref}")
    assert gw["reasoning"] and gw["content"]
    for key in ("reasoning", "content", "finish", "usage"):
        assert gw[key] == ref[key], key
    # Reasoning tokens are output: charged like text.
    assert after["completion_tokens"] - before["completion_tokens"] == 12


def test_reasoning_non_streamed_keeps_the_field(client, direct):
    for budget in (4, None):
        args = reasoning_args(12, budget)
        g = client.chat.completions.create(**args).choices[0].message
        r = direct.chat.completions.create(**args).choices[0].message
        assert g.model_extra["reasoning"] == r.model_extra["reasoning"]
        assert "reasoning_content" not in g.model_extra
        assert g.content == r.content  # None when everything was reasoning


def test_reasoning_longer_than_the_first_token_timeout_is_served(real_vllm_tools, tmp_path):
    """A gateway whose first-token timeout is 0.5 s serves a stream that
    reasons for longer than that before any text (it never writes text).
    (At 1 s the engine was once faster than the timeout: 400 tokens in
    0.94 s, and the check that it reasoned for longer failed.)"""
    from conftest import _run_gateway

    config = tmp_path / "gateway.toml"
    text = real_vllm_tools.config.replace("first_token_timeout_ms = 60000", "first_token_timeout_ms = 500")
    assert "first_token_timeout_ms = 500" in text
    config.write_text(text, encoding="utf-8")
    run = _run_gateway(["--config", str(config)], tmp_path, config)
    gateway = next(run)
    try:
        with openai.OpenAI(base_url=gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=180.0) as c:
            started = time.monotonic()
            out = streamed(c, **reasoning_args(400, None))
            elapsed = time.monotonic() - started
    finally:
        next(run, None)
    print(f"\n{out['usage'][1]} tokens of reasoning in {elapsed:.2f} s")
    assert out["content"] == "" and out["reasoning"]
    assert out["usage"][1] == 400 and out["finish"] == "length"
    # The engine thought for longer than the first-token timeout.
    assert elapsed > 0.5


# --- logprobs -------------------------------------------------------------------


def test_chat_logprobs_equal_vllms(client, direct):
    args = {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": "Say something."}],
        "max_tokens": 8,
        "temperature": 0,
        "seed": SEED,
        "logprobs": True,
        "top_logprobs": 2,
    }
    gw = streamed(client, **args)
    ref = streamed(direct, **args)
    assert len(gw["logprobs"]) == 8
    assert gw["logprobs"] == ref["logprobs"]
    assert gw["content"] == ref["content"]
    g = client.chat.completions.create(**args).choices[0]
    r = direct.chat.completions.create(**args).choices[0]
    assert [logprob_entry(e) for e in g.logprobs.content] == [logprob_entry(e) for e in r.logprobs.content]
    assert [logprob_entry(e) for e in g.logprobs.content] == gw["logprobs"]


def test_completion_logprobs_equal_vllms(client, direct):
    args = {"model": REAL_MODEL, "prompt": "Grüße, world", "max_tokens": 6, "temperature": 0, "seed": SEED, "logprobs": 2}

    def legacy(lp) -> tuple:
        return (lp.tokens, lp.token_logprobs, [list(t.items()) for t in lp.top_logprobs], lp.text_offset)

    g = client.completions.create(**args).choices[0]
    r = direct.completions.create(**args).choices[0]
    assert g.text == r.text
    assert legacy(g.logprobs) == legacy(r.logprobs)

    def streamed_legacy(c) -> tuple:
        parts = ([], [], [], [])
        for chunk in c.completions.create(stream=True, **args):
            for choice in chunk.choices:
                if choice.logprobs is not None:
                    for acc, part in zip(parts, legacy(choice.logprobs)):
                        acc.extend(part)
        return parts

    assert streamed_legacy(client) == streamed_legacy(direct)


# --- structured output ------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}


def test_json_schema_output_parses_against_the_schema(client, direct):
    args = {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": "Answer in JSON: is it ok?"}],
        "max_tokens": 40,
        "temperature": 0,
        "seed": SEED,
        "logit_bias": NO_WHITESPACE,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
    }
    g = client.chat.completions.create(**args).choices[0]
    r = direct.chat.completions.create(**args).choices[0]
    value = json.loads(g.message.content)
    assert set(value) == {"ok"} and isinstance(value["ok"], bool)
    assert (g.message.content, g.finish_reason) == (r.message.content, r.finish_reason) == (g.message.content, "stop")
