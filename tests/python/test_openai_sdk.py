"""The official `openai` Python SDK against the built `gateway` binary.

The gateway runs one simulated engine (see conftest.py) whose output is
deterministic per prompt and seed and whose completions are exactly
NATURAL_TOKENS long, so the tests assert exact values. Every usage the SDK
sees is tallied, and the last test checks the admin ledger against the tally.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from conftest import (
    ADMIN_KEY,
    CACHED_INPUT_USD_PER_MTOK,
    CONTEXT_WINDOW,
    INPUT_USD_PER_MTOK,
    MODEL,
    NATURAL_TOKENS,
    OUTPUT_USD_PER_MTOK,
    TENANT_ID,
    TENANT_KEY,
    Gateway,
)

MAX_TOKENS = 12  # below NATURAL_TOKENS: every such completion ends by `length`
SEED = 42
MESSAGES = [{"role": "user", "content": "Tell me about gateways."}]
PROMPT = "Once upon a time"


class Tally:
    """What the SDK was told about every request the gateway served."""

    def __init__(self) -> None:
        self.requests = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0

    def add(self, usage) -> None:
        assert usage is not None
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.prompt_tokens_details.cached_tokens
        self.completion_tokens += usage.completion_tokens


@pytest.fixture(scope="session")
def tally() -> Tally:
    return Tally()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    # No retries: a status the SDK would retry (429, 5xx) must show up as a
    # failure here, not be hidden.
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=10.0
    ) as c:
        yield c


def check_usage(usage, *, completion_tokens: int) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens == completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    # The simulated engine never reports a prefix-cache hit.
    assert usage.prompt_tokens_details.cached_tokens == 0


def chat_stream(client: openai.OpenAI, tally: Tally, **kwargs):
    """Streams a chat completion; returns (text, finish_reason, usage, chunks)."""
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}, **kwargs,
    )
    text, finish, usage, chunks = [], None, None, []
    for chunk in stream:
        chunks.append(chunk)
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == MODEL
        if chunk.usage is not None:
            assert usage is None, "usage sent twice"
            assert chunk.choices == [], "the usage chunk carries no choices"
            usage = chunk.usage
            continue
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        assert choice.index == 0
        assert finish is None, "a chunk after the one with finish_reason"
        if choice.delta.content:
            text.append(choice.delta.content)
        finish = choice.finish_reason
    assert usage is not None, "no usage chunk despite include_usage"
    assert chunks[-1].usage is not None, "the usage chunk is the last one"
    assert len({c.id for c in chunks}) == 1, "one id for every chunk"
    tally.add(usage)
    return "".join(text), finish, usage, chunks


def completion_stream(client: openai.OpenAI, tally: Tally, **kwargs):
    """Streams a legacy completion; returns (text, finish_reason, usage)."""
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, stream=True,
        stream_options={"include_usage": True}, **kwargs,
    )
    text, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "text_completion"
        assert chunk.model == MODEL
        if chunk.usage is not None:
            assert usage is None, "usage sent twice"
            assert chunk.choices == []
            usage = chunk.usage
            continue
        assert len(chunk.choices) == 1
        assert finish is None, "a chunk after the one with finish_reason"
        text.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason
    assert usage is not None, "no usage chunk despite include_usage"
    tally.add(usage)
    return "".join(text), finish, usage


# --- chat completions -------------------------------------------------------


def test_chat_non_streaming_and_streaming_agree(client, tally):
    first = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED
    )
    tally.add(first.usage)
    assert first.object == "chat.completion"
    assert first.model == MODEL
    assert first.id
    assert len(first.choices) == 1
    choice = first.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"
    assert choice.message.content
    check_usage(first.usage, completion_tokens=MAX_TOKENS)

    # The simulated engine is deterministic per prompt and seed.
    again = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED
    )
    tally.add(again.usage)
    assert again.choices[0].message.content == choice.message.content
    assert again.usage.prompt_tokens == first.usage.prompt_tokens

    text, finish, usage, _ = chat_stream(client, tally, max_tokens=MAX_TOKENS, seed=SEED)
    assert text == choice.message.content
    assert finish == "length"
    check_usage(usage, completion_tokens=MAX_TOKENS)
    assert usage.prompt_tokens == first.usage.prompt_tokens


def test_chat_streaming_first_chunk_has_role(client, tally):
    _, _, _, chunks = chat_stream(client, tally, max_tokens=MAX_TOKENS, seed=SEED)
    assert chunks[0].choices[0].delta.role == "assistant"


def test_chat_seed_changes_the_text(client, tally):
    a = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=1)
    b = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=2)
    tally.add(a.usage)
    tally.add(b.usage)
    assert a.choices[0].message.content != b.choices[0].message.content


def test_chat_natural_end_is_stop(client, tally):
    # max_tokens above the engine's natural length: it stops by itself.
    done = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=NATURAL_TOKENS + 10, seed=SEED
    )
    tally.add(done.usage)
    assert done.choices[0].finish_reason == "stop"
    check_usage(done.usage, completion_tokens=NATURAL_TOKENS)

    text, finish, usage, _ = chat_stream(client, tally, max_tokens=NATURAL_TOKENS + 10, seed=SEED)
    assert finish == "stop"
    assert text == done.choices[0].message.content
    check_usage(usage, completion_tokens=NATURAL_TOKENS)

    # The capped text is a prefix of the whole one.
    capped = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED
    )
    tally.add(capped.usage)
    assert done.choices[0].message.content.startswith(capped.choices[0].message.content)


def test_chat_async_client_streams_the_same(gateway, client, tally):
    expected = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED
    )
    tally.add(expected.usage)

    async def stream() -> tuple[str, str | None, object]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=10.0
        ) as aclient:
            chunks = await aclient.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED,
                stream=True, stream_options={"include_usage": True},
            )
            text, finish, usage = [], None, None
            async for chunk in chunks:
                if chunk.usage is not None:
                    usage = chunk.usage
                elif chunk.choices:
                    text.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            return "".join(text), finish, usage

    text, finish, usage = asyncio.run(stream())
    tally.add(usage)
    assert text == expected.choices[0].message.content
    assert finish == "length"
    check_usage(usage, completion_tokens=MAX_TOKENS)


def test_chat_max_completion_tokens(client, tally):
    # The newer name of the cap, which current SDKs steer users to.
    done = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=5, seed=SEED
    )
    tally.add(done.usage)
    assert done.choices[0].finish_reason == "length"
    check_usage(done.usage, completion_tokens=5)


# --- legacy completions -----------------------------------------------------


def test_completions_non_streaming_and_streaming_agree(client, tally):
    first = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, seed=SEED)
    tally.add(first.usage)
    assert first.object == "text_completion"
    assert first.model == MODEL
    assert len(first.choices) == 1
    assert first.choices[0].index == 0
    assert first.choices[0].finish_reason == "length"
    assert first.choices[0].text
    check_usage(first.usage, completion_tokens=MAX_TOKENS)

    again = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, seed=SEED)
    tally.add(again.usage)
    assert again.choices[0].text == first.choices[0].text

    text, finish, usage = completion_stream(client, tally, max_tokens=MAX_TOKENS, seed=SEED)
    assert text == first.choices[0].text
    assert finish == "length"
    check_usage(usage, completion_tokens=MAX_TOKENS)
    assert usage.prompt_tokens == first.usage.prompt_tokens


def test_completions_natural_end_is_stop(client, tally):
    done = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=NATURAL_TOKENS + 10, seed=SEED
    )
    tally.add(done.usage)
    assert done.choices[0].finish_reason == "stop"
    check_usage(done.usage, completion_tokens=NATURAL_TOKENS)

    text, finish, usage = completion_stream(client, tally, max_tokens=NATURAL_TOKENS + 10, seed=SEED)
    assert finish == "stop"
    assert text == done.choices[0].text
    check_usage(usage, completion_tokens=NATURAL_TOKENS)


# --- models -----------------------------------------------------------------


def test_models_list_is_exactly_the_configured_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert [m.id for m in models] == [MODEL]  # the SDK's page iteration
    assert models.data[0].object == "model"


# --- errors -----------------------------------------------------------------


def test_wrong_key_is_authentication_error(gateway):
    with openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert caught.value.status_code == 401
        assert caught.value.code == "invalid_api_key"
        assert caught.value.type == "authentication_error"
        assert caught.value.request_id  # x-request-id, even on errors

        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.code == "invalid_api_key"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"

    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=4)
    assert caught.value.code == "model_not_found"


def test_too_long_is_context_length_exceeded(client):
    # A prompt far beyond the context window.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "gateway " * CONTEXT_WINDOW}],
            max_tokens=4,
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"

    # A short prompt whose max_tokens alone exceeds the window.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=CONTEXT_WINDOW + 1)
    assert caught.value.code == "context_length_exceeded"

    # Streaming requests are refused the same way, before any stream starts.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=CONTEXT_WINDOW + 1, stream=True
        )
    assert caught.value.code == "context_length_exceeded"


def test_malformed_request_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=4)
    assert caught.value.code == "invalid_request"


# --- x-request-id -----------------------------------------------------------


def test_request_id_is_echoed(client, tally):
    raw = client.with_options(
        default_headers={"x-request-id": "pytest-req-1"}
    ).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, seed=SEED
    )
    assert raw.status_code == 200
    assert raw.headers["x-request-id"] == "pytest-req-1"
    assert raw.request_id == "pytest-req-1"
    tally.add(raw.parse().usage)

    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS,
        extra_headers={"x-request-id": "pytest-req-2"},
    )
    assert raw.headers["x-request-id"] == "pytest-req-2"
    tally.add(raw.parse().usage)

    # Streaming: the header comes before the first event.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": "pytest-req-3"},
    )
    assert raw.headers["x-request-id"] == "pytest-req-3"
    usage = [c.usage for c in raw.parse() if c.usage is not None]
    assert len(usage) == 1
    tally.add(usage[0])

    # Without one from the client, the gateway makes one up, each different.
    a = client.models.with_raw_response.list()
    b = client.models.with_raw_response.list()
    assert a.headers.get("x-request-id")
    assert b.headers.get("x-request-id")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


# --- the ledger (keep last: it checks the sums of everything above) ---------


def admin_usage(gateway: Gateway, tenant: str = TENANT_ID, key: str = ADMIN_KEY) -> dict:
    request = urllib.request.Request(
        f"http://{gateway.addr}/admin/tenants/{tenant}/usage",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "application/json"
        return json.load(response)


def test_admin_usage_matches_what_the_sdk_saw(gateway, client, tally):
    # At least one request of its own, so the check means something even
    # when this test runs alone.
    done = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, seed=SEED)
    tally.add(done.usage)

    usage = admin_usage(gateway)
    assert usage["tenant"] == TENANT_ID
    assert usage["requests"] == tally.requests
    assert usage["prompt_tokens"] == tally.prompt_tokens
    assert usage["cached_tokens"] == tally.cached_tokens
    assert usage["completion_tokens"] == tally.completion_tokens
    assert usage["reserved_usd"] == 0
    assert usage["canceled_tokens"] == 0
    # Spend is exact: uncached prompt, cached prompt and completion tokens at
    # their prices (the model is configured in whole micro-dollars per Mtok).
    uncached = tally.prompt_tokens - tally.cached_tokens
    expected_usd = (
        uncached * INPUT_USD_PER_MTOK
        + tally.cached_tokens * CACHED_INPUT_USD_PER_MTOK
        + tally.completion_tokens * OUTPUT_USD_PER_MTOK
    ) / 1e6
    assert usage["spent_usd"] == pytest.approx(expected_usd, rel=1e-9, abs=1e-15)


def test_admin_usage_needs_the_admin_key(gateway):
    for key in (TENANT_KEY, "wrong"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            admin_usage(gateway, key=key)
        assert caught.value.code == 401
        body = json.load(caught.value)
        assert body["error"]["code"] == "invalid_api_key"
