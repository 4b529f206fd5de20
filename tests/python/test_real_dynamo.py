"""The `gateway` binary in front of a REAL NVIDIA Dynamo, driven by the
official `openai` SDK (the `real_dynamo` fixture in conftest.py): ai-dynamo
1.6.1's OpenAI-compatible frontend with one GPU-free mocker worker serving
"tiny-llama" (the real TinyLlama tokenizer, no weights; its text is random
tokens that always run to `max_tokens`), found by file-based discovery
(docs/real-engine-dynamo.md).

Everything measured here is the real frontend's: its wire (no role-only
first chunk, the finish reason in a chunk of its own), token counts and
usage, strict validation of fields and `nvext` keys, its overload answer,
cancellation passed on to the worker, and its `/metrics`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from helpers import NO_PROXY, http_get, metric, post_raw, read_until, reset
from conftest import ADMIN_KEY, ESTIMATE_PROMPTS, RESET_SLACK, REAL_DYNAMO_BACKEND, REAL_MODEL, TENANT_ID, TENANT_KEY, RealDynamo



# --- helpers -----------------------------------------------------------------



def http_post(url: str, body: dict) -> tuple[int, dict[str, str], str]:
    """Status, headers (lowercase names) and body of a JSON POST; error
    statuses are returned, not raised."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode("utf-8")






def gateway_metrics(rd: RealDynamo) -> str:
    return http_get(f"http://{rd.gateway.addr}/metrics")


def frontend_metrics(rd: RealDynamo) -> str:
    return http_get(f"{rd.url}/metrics")


def worker_metrics(rd: RealDynamo) -> str | None:
    return http_get(rd.worker_metrics_url) if rd.worker_metrics_url else None


def admin_usage(rd: RealDynamo) -> dict:
    return json.loads(
        http_get(
            f"http://{rd.gateway.addr}/admin/tenants/{TENANT_ID}/usage",
            {"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    )


def estimate_hist(text: str) -> dict[str, float]:
    """The gateway's estimate-error histogram for the model: count, sum, and
    the observations in the bucket that holds 0, i.e. (-0.01, 0]."""
    bucket = "gateway_estimate_error_ratio_bucket"
    return {
        "count": metric(text, "gateway_estimate_error_ratio_count", model=REAL_MODEL),
        "sum": metric(text, "gateway_estimate_error_ratio_sum", model=REAL_MODEL),
        "zero": metric(text, bucket, model=REAL_MODEL, le="0.0") - metric(text, bucket, model=REAL_MODEL, le="-0.01"),
    }


def frontend_gauges(text: str) -> tuple[float, float]:
    """The frontend's (in-flight, queued) for the model."""
    return (
        metric(text, "dynamo_frontend_inflight_requests", model=REAL_MODEL),
        metric(text, "dynamo_frontend_queued_requests", model=REAL_MODEL),
    )


def requests_with_error(text: str, error_type: str) -> float:
    return metric(text, "dynamo_frontend_requests_total", model=REAL_MODEL, error_type=error_type)


def invalid_requests(text: str) -> float:
    return metric(text, "dynamo_frontend_failures_total", **{"class": "InvalidRequest"})


def wait_dynamo_idle(rd: RealDynamo, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if frontend_gauges(frontend_metrics(rd)) == (0, 0):
            return
        time.sleep(0.05)
    raise AssertionError("the Dynamo frontend did not become idle")


def direct_usage(rd: RealDynamo, route: str, body: dict) -> dict:
    """The frontend's own usage for `body` with `max_tokens` 1 (no
    gateway)."""
    status, _, text = http_post(f"{rd.url}/v1/{route}", {"model": REAL_MODEL, "max_tokens": 1, **body})
    assert status == 200, text
    return json.loads(text)["usage"]


@pytest.fixture(scope="module")
def client(real_dynamo: RealDynamo) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=real_dynamo.gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=120.0
    ) as c:
        yield c


# --- streaming and non-streaming ---------------------------------------------

CHAT = [{"role": "user", "content": "Say hello."}]
CHAT_MAX_TOKENS = 16
# "Say hello." rendered and counted as Dynamo does (vLLM counts 19: it does
# not put the `▁` before the newline that follows `</s>`).
CHAT_PROMPT_TOKENS = 20


def test_chat_streaming_and_non_streaming(real_dynamo, client):
    wait_dynamo_idle(real_dynamo)
    done = client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=CHAT_MAX_TOKENS)
    assert done.model == REAL_MODEL
    assert done.choices[0].finish_reason == "length"  # the mocker always runs to max_tokens
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (
        CHAT_PROMPT_TOKENS,
        CHAT_MAX_TOKENS,
        CHAT_PROMPT_TOKENS + CHAT_MAX_TOKENS,
    )

    # Dynamo sends no role-only chunk and the finish reason in a chunk of
    # its own; the gateway's stream is the usual OpenAI one all the same.
    chunks = list(
        client.chat.completions.create(
            model=REAL_MODEL,
            messages=CHAT,
            max_tokens=CHAT_MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert streamed
    assert finish == ["length"]
    assert [(u.prompt_tokens, u.completion_tokens, u.total_tokens) for u in usage] == [
        (CHAT_PROMPT_TOKENS, CHAT_MAX_TOKENS, CHAT_PROMPT_TOKENS + CHAT_MAX_TOKENS)
    ]
    assert chunks[-1].choices == []  # the usage chunk comes last
    print(f"\nchat: {len(chunks)} chunks, text {streamed!r}")


def test_completions_streaming_and_non_streaming(real_dynamo, client):
    done = client.completions.create(model=REAL_MODEL, prompt="Hello world", max_tokens=12)
    assert done.choices[0].finish_reason == "length"
    # No BOS on a text prompt: 2 tokens (vLLM counts 3).
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2, 12)
    chunks = list(
        client.completions.create(
            model=REAL_MODEL,
            prompt="Hello world",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(2, 12)]


# --- nvext and the frontend's strict validation ------------------------------


def test_nvext_is_passed_through(real_dynamo, client):
    nvext = {"greed_sampling": True, "extra_fields": ["worker_id", "timing"], "annotations": ["formatted_prompt"]}
    extra = {"nvext": nvext, "top_k": 5, "ignore_eos": True, "min_tokens": 1}
    before = frontend_metrics(real_dynamo)
    r = client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=4, extra_body=extra)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4
    # Streamed too: the `event: formatted_prompt` annotation the frontend
    # adds to the SSE stream is skipped.
    chunks = list(
        client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=4, stream=True, extra_body=extra)
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    # What the frontend adds to its own answer for `extra_fields` is not in
    # the gateway's (the gateway builds its response from the tokens).
    assert "nvext" not in (r.model_extra or {})
    status, _, body = http_post(
        f"{real_dynamo.url}/v1/chat/completions", {"model": REAL_MODEL, "messages": CHAT, "max_tokens": 2, **extra}
    )
    assert status == 200, body
    assert "ttft_ms" in json.loads(body)["nvext"]["timing"]

    # An unknown nvext key reaches the frontend (it fails to read the body:
    # its invalid-request counter moves) and its 400 comes back as the
    # gateway's invalid_request.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=REAL_MODEL, messages=CHAT, max_tokens=2, extra_body={"nvext": {"greed_sampling": True, "bogus": 1}}
        )
    assert e.value.status_code == 400
    assert e.value.body["code"] == "invalid_request"
    after = frontend_metrics(real_dynamo)
    assert invalid_requests(after) - invalid_requests(before) == 1
    print(f"\nunknown nvext key: gateway {e.value.status_code} {e.value.body}")

    # The frontend refuses `safety_identifier` (an OpenAI field); the
    # gateway names it itself and sends nothing.
    status, _, body = http_post(
        f"{real_dynamo.url}/v1/chat/completions",
        {"model": REAL_MODEL, "messages": CHAT, "max_tokens": 2, "safety_identifier": "s"},
    )
    assert (status, json.loads(body)["message"]) == (400, "Validation: Unsupported parameter(s): `safety_identifier`")
    started = metric(frontend_metrics(real_dynamo), "dynamo_frontend_requests_started_total", model=REAL_MODEL)
    for refused, param in [
        ({"safety_identifier": "s"}, "safety_identifier"),
        ({"nvext": {"token_data": [1, 2]}}, "nvext.token_data"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=2, extra_body=refused)
        assert e.value.body["param"] == param
    assert metric(frontend_metrics(real_dynamo), "dynamo_frontend_requests_started_total", model=REAL_MODEL) == started


# --- the gateway's prompt-token estimate against Dynamo's count -------------

ESTIMATE_CASES = [
    ("completion: Hello world", {"prompt": "Hello world"}, 2),
    ("chat: Say hello.", {"messages": CHAT}, CHAT_PROMPT_TOKENS),
    (
        "chat: system + user",
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello there"}]},
        32,
    ),
] + [(name, request, None) for name, request in ESTIMATE_PROMPTS]


@pytest.mark.parametrize("case", ESTIMATE_CASES, ids=[c[0] for c in ESTIMATE_CASES])
def test_prompt_estimate_equals_dynamo_count(real_dynamo, client, case):
    _, request, known = case
    route = "completions" if "prompt" in request else "chat/completions"
    # Dynamo's own count, as it will report it.
    engine_count = direct_usage(real_dynamo, route, request)["prompt_tokens"]
    if known is not None:
        assert engine_count == known

    before_m = estimate_hist(gateway_metrics(real_dynamo))
    before_u = admin_usage(real_dynamo)
    if "prompt" in request:
        r = client.completions.create(model=REAL_MODEL, prompt=request["prompt"], max_tokens=1)
    else:
        r = client.chat.completions.create(model=REAL_MODEL, messages=request["messages"], max_tokens=1)
    assert r.usage.prompt_tokens == engine_count
    assert r.usage.completion_tokens == 1

    # The estimate is observed when the request settles, just after the
    # response: wait for it (bounded), then check it exactly.
    deadline = time.monotonic() + 5
    after_m = estimate_hist(gateway_metrics(real_dynamo))
    while after_m["count"] == before_m["count"] and time.monotonic() < deadline:
        time.sleep(0.02)
        after_m = estimate_hist(gateway_metrics(real_dynamo))
    after_u = admin_usage(real_dynamo)
    seen = {k: after_m[k] - before_m[k] for k in after_m}
    print(f"\n{case[0]}: Dynamo prompt_tokens {engine_count}; estimate-error histogram delta {seen}")
    # One observation, in the bucket of 0 with a ratio of exactly 0.
    assert seen == {"count": 1, "sum": 0.0, "zero": 1}
    assert after_u["prompt_tokens"] - before_u["prompt_tokens"] == engine_count
    assert after_u["completion_tokens"] - before_u["completion_tokens"] == 1
    assert after_u["reserved_usd"] == 0


# --- a client disconnect cancels the request in the worker -------------------

CANCEL_MAX_TOKENS = 1800  # ~10 s at the mocker's speed: still running when cut
CANCEL_AFTER_CHUNKS = 6


def _worker_log(rd: RealDynamo, request_id: str) -> dict[str, int] | None:
    """How the mocker's log ends the request the gateway sent as
    `request_id`: lines saying it got the frontend's kill, that it could not
    publish a response (the frontend had dropped the stream), that the
    request completed (None without the log)."""
    if rd.mocker_log is None:
        return None
    seen = {"kill": 0, "publish_failed": 0, "completed": 0}
    for line in rd.mocker_log.read_text(encoding="utf-8", errors="replace").splitlines():
        if f'"x_request_id":"{request_id}"' not in line:
            continue
        message = json.loads(line).get("message", "")
        if message == "request cancellation received":
            seen["kill"] += 1
        elif message.startswith("Failed to publish response"):
            seen["publish_failed"] += 1
        elif message == "request completed":
            seen["completed"] += 1
    return seen


def _cancel_before(rd: RealDynamo) -> dict:
    wait_dynamo_idle(rd)
    fe = frontend_metrics(rd)
    wk = worker_metrics(rd)
    return {
        "usage": admin_usage(rd),
        "aborts": metric(gateway_metrics(rd), "gateway_upstream_aborts_total", backend=REAL_DYNAMO_BACKEND),
        "disconnected": metric(fe, "dynamo_frontend_disconnected_clients"),
        "cancelled": requests_with_error(fe, "cancelled"),
        "produced": metric(fe, "dynamo_frontend_output_tokens_total", model=REAL_MODEL),
        "worker_cancels": None
        if wk is None
        else metric(wk, "dynamo_component_cancellation_total", dynamo_endpoint="generate"),
    }


def _assert_canceled(rd: RealDynamo, before: dict, request_id: str, received: int, how: str, slack: int | None) -> None:
    """The frontend saw the client leave and passed the kill on to the
    worker, and the gateway charged what the client got."""
    t0 = time.monotonic()
    while True:
        fe = frontend_metrics(rd)
        if frontend_gauges(fe) == (0, 0) and requests_with_error(fe, "cancelled") > before["cancelled"]:
            break
        assert time.monotonic() - t0 < 2.0, f"{how}: the frontend still runs the request after 2 s"
        time.sleep(0.02)
    freed_s = time.monotonic() - t0
    wk = worker_metrics(rd)
    if wk is not None:
        t1 = time.monotonic()
        while metric(wk, "vllm:num_requests_running", model_name=REAL_MODEL) != 0:
            assert time.monotonic() - t1 < 2.0, f"{how}: the mocker still runs the request after 2 s"
            time.sleep(0.02)
            wk = worker_metrics(rd)
    produced = int(metric(fe, "dynamo_frontend_output_tokens_total", model=REAL_MODEL) - before["produced"])
    deadline = time.monotonic() + 5
    while True:
        usage = admin_usage(rd)
        if usage["requests"] > before["usage"]["requests"] and usage["reserved_usd"] == 0:
            break
        assert time.monotonic() < deadline, f"{how}: the gateway did not settle the request: {usage}"
        time.sleep(0.05)
    charged = usage["completion_tokens"] - before["usage"]["completion_tokens"]
    aborts = metric(gateway_metrics(rd), "gateway_upstream_aborts_total", backend=REAL_DYNAMO_BACKEND) - before["aborts"]
    worker_cancels = (
        None
        if wk is None
        else metric(wk, "dynamo_component_cancellation_total", dynamo_endpoint="generate") - before["worker_cancels"]
    )
    # The request ends in the worker's log (bounded wait for the line).
    log = _worker_log(rd, request_id)
    t2 = time.monotonic()
    while log is not None and log["completed"] == 0 and time.monotonic() - t2 < 2.0:
        time.sleep(0.05)
        log = _worker_log(rd, request_id)
    print(
        f"\n{how}: client received {received} content chunks; frontend produced {produced}, idle after "
        f"{freed_s:.2f}s; disconnected_clients +{metric(fe, 'dynamo_frontend_disconnected_clients') - before['disconnected']}, "
        f"requests_total{{error_type=cancelled}} +{requests_with_error(fe, 'cancelled') - before['cancelled']}; "
        f"mocker dynamo_component_cancellation_total +{worker_cancels}, its log for {request_id}: {log}; "
        f"gateway charged {charged}, aborts +{aborts}"
    )
    assert metric(fe, "dynamo_frontend_disconnected_clients") - before["disconnected"] == 1
    assert requests_with_error(fe, "cancelled") - before["cancelled"] == 1
    # The worker stops the request at once (it would run ~10 s): mostly on
    # the frontend's kill; sometimes, a race inside Dynamo, it finds the
    # response stream gone first and ends the request there (no kill
    # counted). Either way its running gauge is back to 0 above.
    if log is not None:
        assert log["completed"] == 1, log
        assert log["kill"] + log["publish_failed"] >= 1, log
        if worker_cancels is not None:
            assert worker_cancels == log["kill"]
    elif worker_cancels is not None:
        assert worker_cancels <= 1
    assert aborts == 1
    assert usage["reserved_usd"] == 0
    assert usage["requests"] - before["usage"]["requests"] == 1
    assert received <= charged <= produced, f"{how}: charged {charged}, received {received}, produced {produced}"
    if slack is not None:
        assert charged <= received + slack, f"{how}: charged {charged}, received {received} (+ at most {slack})"


def test_sdk_stream_closed_cancels_in_the_worker(real_dynamo, client):
    before = _cancel_before(real_dynamo)
    stream = client.chat.completions.create(
        model=REAL_MODEL,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=CANCEL_MAX_TOKENS,
        stream=True,
    )
    request_id = stream.response.headers["x-request-id"]  # the id the gateway sent upstream
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == CANCEL_AFTER_CHUNKS:
                break
    stream.close()
    # What reached the socket may exceed what the SDK parsed: bounded by
    # what the frontend produced (the raw-socket test is exact).
    _assert_canceled(real_dynamo, before, request_id, received, "SDK stream closed", slack=None)


def _content_chunks(raw: bytes) -> int:
    """Token chunks in the SSE bytes so far (complete lines only; the
    gateway's role chunk has no content)."""
    count = 0
    for line in raw.split(b"\n")[:-1]:
        line = line.strip()
        if line.startswith(b"data: {"):
            for choice in json.loads(line[len(b"data: ") :]).get("choices", []):
                if choice.get("delta", {}).get("content"):
                    count += 1
    return count


def test_raw_socket_reset_cancels_in_the_worker(real_dynamo):
    before = _cancel_before(real_dynamo)
    sock = post_raw(
        real_dynamo.gateway.addr,
        "/v1/chat/completions",
        TENANT_KEY,
        {
            "model": REAL_MODEL,
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": CANCEL_MAX_TOKENS,
            "stream": True,
        },
    )
    with sock:  # closed by reset(), or by the with on a failure
        raw = read_until(sock, lambda raw: _content_chunks(raw) >= CANCEL_AFTER_CHUNKS)
        assert raw.startswith(b"HTTP/1.1 200")
        assert frontend_gauges(frontend_metrics(real_dynamo)) == (1, 0)  # running, not queued
        raw += reset(sock)
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    request_id = re.search(r"(?im)^x-request-id:\s*(\S+)", head).group(1)
    _assert_canceled(real_dynamo, before, request_id, _content_chunks(raw), "raw socket reset", slack=RESET_SLACK)


# --- pressure from the frontend's /metrics rises under load -----------------

LOAD_REQUESTS = 12
LOAD_MAX_TOKENS = 300  # ~1.8 s each; the mocker runs 4 at once (start.sh)
MOCKER_MAX_NUM_SEQS = 4


def test_backend_pressure_follows_the_frontend_gauges(real_dynamo, client):
    wait_dynamo_idle(real_dynamo)
    results: list[tuple[int, str | None] | BaseException] = []

    def one(i: int) -> None:
        try:
            n, finish = 0, None
            for chunk in client.chat.completions.create(
                model=REAL_MODEL,
                messages=[{"role": "user", "content": f"Story number {i}, please."}],
                max_tokens=LOAD_MAX_TOKENS,
                stream=True,
                stream_options={"include_usage": True},
            ):
                if chunk.usage is not None:
                    n = chunk.usage.completion_tokens
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            results.append((n, finish))
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(LOAD_REQUESTS)]
    # (t, gateway queue depth, frontend in-flight, frontend queued, mocker running, mocker waiting)
    seen: list[tuple[float, ...]] = []
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < 120:
        g = gateway_metrics(real_dynamo)
        inflight, queued = frontend_gauges(frontend_metrics(real_dynamo))
        w = worker_metrics(real_dynamo)
        running_w = -1.0 if w is None else metric(w, "vllm:num_requests_running", model_name=REAL_MODEL)
        waiting_w = -1.0 if w is None else metric(w, "vllm:num_requests_waiting", model_name=REAL_MODEL)
        seen.append(
            (
                round(time.monotonic() - t0, 2),
                metric(g, "gateway_backend_queue_depth", backend=REAL_DYNAMO_BACKEND),
                inflight,
                queued,
                running_w,
                waiting_w,
            )
        )
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=5)
    took = time.monotonic() - t0

    print(f"\n{LOAD_REQUESTS} streams x {LOAD_MAX_TOKENS} tokens in {took:.1f}s; {len(seen)} polls")
    print("t(s), gateway queue_depth, frontend inflight, frontend queued, mocker running, mocker waiting (changes):")
    last = None
    for s in seen:
        if s[1:] != last:
            print("  ", s)
            last = s[1:]

    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert sorted(results) == [(LOAD_MAX_TOKENS, "length")] * LOAD_REQUESTS
    # running = in-flight - queued never exceeds the worker's batch and
    # reaches it; the rest queue, and the gateway saw the queue.
    assert max(s[2] - s[3] for s in seen) == MOCKER_MAX_NUM_SEQS
    assert max(s[3] for s in seen) > 0
    assert max(s[1] for s in seen) > 0
    if real_dynamo.worker_metrics_url is not None:
        assert max(s[4] for s in seen) == MOCKER_MAX_NUM_SEQS
        # Between the frontend's and the mocker's reads a request may move
        # on; most polls agree, and some of them while requests queue: the
        # derivation is then the worker's own running count.
        steady = [s for s in seen if s[2] - s[3] == s[4] and s[3] == s[5]]
        assert len(steady) >= len(seen) // 3, seen
        assert any(s[4] == MOCKER_MAX_NUM_SEQS and s[5] > 0 for s in steady), seen


# --- overload: the frontend's busy threshold ----------------------------------


def _set_busy_threshold(rd: RealDynamo, value: float) -> None:
    status, _, body = http_post(
        f"{rd.url}/busy_threshold", {"model": REAL_MODEL, "active_decode_blocks_threshold": value}
    )
    assert status == 200, body
    assert json.loads(body)["active_decode_blocks_threshold"] == value


def test_frontend_overload_is_overloaded_with_retry_after(real_dynamo, client):
    """Dynamo rejects only with a busy threshold: set to 0 at run time, any
    load the worker reports makes the frontend answer 529 until it is
    raised again (1.0: never, as started)."""
    wait_dynamo_idle(real_dynamo)
    before_fe = frontend_metrics(real_dynamo)
    before_g = gateway_metrics(real_dynamo)
    _set_busy_threshold(real_dynamo, 0.0)
    stream = None
    try:
        stream = client.chat.completions.create(
            model=REAL_MODEL,
            messages=[{"role": "user", "content": "Keep the worker busy."}],
            max_tokens=CANCEL_MAX_TOKENS,
            stream=True,
        )
        got = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got += 1
                if got == 3:
                    break
        # The worker reports its load a moment later: bounded tries.
        error = None
        for _ in range(30):
            try:
                client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=2)
            except openai.APIStatusError as e:
                error = e
                break
            time.sleep(0.1)
        assert error is not None, "the frontend never answered overloaded"
        # The frontend's own answer, for the record: 529, no Retry-After.
        status, headers, body = http_post(
            f"{real_dynamo.url}/v1/chat/completions", {"model": REAL_MODEL, "messages": CHAT, "max_tokens": 2}
        )
    finally:
        _set_busy_threshold(real_dynamo, 1.0)
        if stream is not None:
            stream.close()
    print(f"\ngateway: {error.status_code} {error.body} retry-after {error.response.headers.get('retry-after')}")
    print(f"frontend: {status} {body} retry-after {headers.get('retry-after')}")
    assert (status, json.loads(body)) == (
        529,
        {"message": "Service temporarily overloaded", "type": "Overloaded", "code": 529},
    )
    assert "retry-after" not in headers
    assert error.status_code == 503
    assert error.body["code"] == "overloaded"
    assert int(error.response.headers["retry-after"]) >= 1
    after_fe = frontend_metrics(real_dynamo)
    assert requests_with_error(after_fe, "overload") - requests_with_error(before_fe, "overload") >= 2
    failures = metric(
        gateway_metrics(real_dynamo), "gateway_backend_failures_total", backend=REAL_DYNAMO_BACKEND, kind="overloaded"
    ) - metric(before_g, "gateway_backend_failures_total", backend=REAL_DYNAMO_BACKEND, kind="overloaded")
    assert failures == 1

    # With the threshold raised the gateway serves again (its own overload
    # mark expires; bounded).
    deadline = time.monotonic() + 15
    while True:
        try:
            r = client.chat.completions.create(model=REAL_MODEL, messages=CHAT, max_tokens=2)
            break
        except openai.APIStatusError as e:
            assert time.monotonic() < deadline, f"still refused after the threshold was raised: {e}"
            time.sleep(0.2)
    assert r.usage.completion_tokens == 2
