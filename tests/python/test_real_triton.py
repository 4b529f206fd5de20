"""The `gateway` binary in front of a REAL Triton Inference Server, driven by
the official `openai` SDK (the `real_triton` fixture in conftest.py;
docs/real-triton.md).

The server is the real `tritonserver` (2.51, from the nvidia-pytriton wheel)
with its real HTTP frontend, scheduler, queue limit, cancellation and metrics;
the model behind it is a Python stand-in for TensorRT-LLM's `ensemble`
(scripts/real-engine/triton/model/ensemble/1/model.py): the same tensor names,
deterministic words, one response per token every 25 ms, failures scripted by
markers in the prompt, and a line in events.jsonl for every request it ends
(`cancelled` when it saw `request.is_cancelled()`).

Triton takes text prompts only (the gateway renders no chat templates for
engines, docs/engines.md): the model is driven through the legacy completions
route, and chat is checked to be refused.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from helpers import NO_PROXY, http_get, metric
from conftest import (
    REAL_TRITON_BACKEND,
    REAL_TRITON_MISSING_MODEL,
    REAL_TRITON_MODEL,
    TENANT_KEY,
    RealTriton,
)

MODEL = REAL_TRITON_MODEL
# What the model generates (model.py): these words in order, each with a
# trailing space, one token each.
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "naïve", "café", "日本", "🙂"]


def text_of(n: int) -> str:
    return "".join(WORDS[i % len(WORDS)] + " " for i in range(n))


# --- helpers -----------------------------------------------------------------



def http_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a POST, errors included."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with NO_PROXY.open(request, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8")





def gateway_metrics(rt: RealTriton) -> str:
    return http_get(f"http://{rt.gateway.addr}/metrics")


def pending(rt: RealTriton) -> float:
    return metric(http_get(rt.metrics_url), "nv_inference_pending_request_count", model="ensemble")


def failures(rt: RealTriton, kind: str) -> float:
    return metric(gateway_metrics(rt), "gateway_backend_failures_total", backend=REAL_TRITON_BACKEND, kind=kind)


def events(rt: RealTriton) -> list[dict]:
    assert rt.events_dir is not None, "the model's events folder is unknown (REAL_TRITON_EVENTS_DIR)"
    path = Path(rt.events_dir) / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def event_for(rt: RealTriton, prompt: str, timeout: float = 5.0) -> dict:
    """The model's event for the request with this (unique) prompt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(rt) if e["prompt"] == prompt]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"the model recorded nothing for {prompt!r}")


def wait_idle(rt: RealTriton, timeout: float = 15.0) -> None:
    """Until Triton has nothing queued and the gateway nothing in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g = gateway_metrics(rt)
        if pending(rt) == 0 and metric(g, "gateway_inflight_requests", backend=REAL_TRITON_BACKEND) == 0:
            return
        time.sleep(0.05)
    raise AssertionError("Triton and the gateway did not become idle")


def unique(label: str) -> str:
    return f"{label} {time.monotonic_ns()}"


@pytest.fixture(scope="module")
def client(real_triton: RealTriton) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=real_triton.gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=60.0
    ) as c:
        yield c


# --- text, streaming and not ---------------------------------------------------


def test_completions_non_streaming_exact(real_triton, client):
    wait_idle(real_triton)
    done = client.completions.create(model=MODEL, prompt="one two three", max_tokens=5)
    assert done.model == MODEL
    assert done.choices[0].text == "alpha beta gamma delta epsilon "
    assert done.choices[0].finish_reason == "length"
    # Prompt tokens from the model's num_input_tokens (three words).
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (3, 5, 8)


def test_completions_streaming_exact_without_done_from_triton(real_triton, client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="four five",
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text == text_of(12)
    assert text.endswith("zeta naïve café 日本 🙂 alpha beta ")  # UTF-8 intact
    assert finish == ["length"]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(2, 12)]
    assert chunks[-1].choices == []

    # Triton ends its stream without [DONE]; the gateway's ends with one.
    status, ctype, body = http_post(
        f"{real_triton.gateway.base_url}/completions",
        json.dumps({"model": MODEL, "prompt": "six", "max_tokens": 3, "stream": True}).encode(),
        {"Authorization": f"Bearer {TENANT_KEY}"},
    )
    assert status == 200 and ctype.startswith("text/event-stream"), (status, ctype, body)
    assert body.endswith("data: [DONE]\n\n"), body
    assert body.count("data: [DONE]") == 1


def test_stop_words_reach_the_model(real_triton, client):
    done = client.completions.create(model=MODEL, prompt="seven", max_tokens=12, stop=["zeta"])
    # The stand-in ends before a stop word; the stream then ends cleanly
    # before the cap: `stop`.
    assert done.choices[0].text == text_of(5)
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens == 5


def test_chat_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert refused.value.status_code == 400
    assert refused.value.body["code"] == "invalid_request"


# --- failures ------------------------------------------------------------------


def test_error_after_the_first_token_ends_the_stream_typed(real_triton, client):
    before = failures(real_triton, "internal")
    prompt = unique("[fail-after:2]")
    got = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, stream=True):
            got.extend(c.text for c in chunk.choices)
    assert "".join(got) == text_of(2)
    # The gateway's in-stream error event after the first byte.
    assert failed.value.body["code"] == "internal", failed.value.body
    assert failed.value.body["type"] == "upstream_error", failed.value.body
    assert event_for(real_triton, prompt)["event"] == "failed"
    assert failures(real_triton, "internal") == before + 1

    # Not streamed: nothing was sent yet, so the client gets the kind's status.
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model=MODEL, prompt=unique("[fail-after:2]"), max_tokens=8)
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("marker", "kind", "status", "code"),
    [
        # Triton answers 400 to a model's error before its first token
        # whatever its code (here UNAVAILABLE): the adapter types it by its
        # message, so it is the engine's failure, not the request's.
        ("[fail-first]", "internal", 502, "upstream_error"),
        ("[raise]", "internal", 502, "upstream_error"),
        ("[fail-first:CUDA out of memory while allocating]", "out_of_memory", 503, "overloaded"),
        (
            "[fail-first:Prompt length (9000) exceeds maximum input length (8192).]",
            "context_length_exceeded",
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_error_before_the_first_token_is_typed_by_its_message(real_triton, client, marker, kind, status, code):
    # Engine-side: 400 with the error SSE-framed.
    raw_status, raw_type, raw_body = http_post(
        f"{real_triton.url}/v2/models/ensemble/generate_stream",
        json.dumps({"text_input": unique(marker), "max_tokens": 4, "stream": True}).encode(),
    )
    assert (raw_status, raw_type) == (400, "text/event-stream; charset=utf-8"), raw_body
    assert raw_body.startswith('data: {"error":"'), raw_body

    before = failures(real_triton, kind)
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model=MODEL, prompt=unique(marker), max_tokens=4)
    assert (failed.value.status_code, failed.value.body["code"]) == (status, code), failed.value.body
    assert failures(real_triton, kind) == before + 1


def test_unknown_model_and_bad_inputs(real_triton, client):
    base = f"{real_triton.url}/v2/models"
    # The real server's own answers, as docs/engines.md has them.
    status, ctype, body = http_post(f"{base}/no-such-model/generate_stream", b'{"text_input":"x","max_tokens":1}')
    assert (status, ctype) == (404, "application/json")
    assert json.loads(body) == {"error": "Request for unknown model: 'no-such-model' is not found"}
    status, ctype, body = http_post(f"{base}/ensemble/generate_stream", b'{"text_input":"x"}')
    assert (status, ctype) == (400, "application/json")
    assert "missing required input(s) ['max_tokens']" in json.loads(body)["error"]
    status, ctype, body = http_post(f"{base}/ensemble/generate_stream", b"{bad")
    assert (status, ctype) == (500, "application/json")
    assert json.loads(body)["error"].startswith("failed to parse the request JSON buffer")
    status, _, body = http_post(f"{base}/ensemble/generate_stream", b'{"text_input":"x","max_tokens":"3"}')
    assert status == 500, body
    # Undeclared keys are request parameters: scalars pass, arrays do not.
    status, _, body = http_post(
        f"{base}/ensemble/generate_stream", b'{"text_input":"x","max_tokens":1,"stream":true,"foo":0.5}'
    )
    assert status == 200, body
    status, _, body = http_post(f"{base}/ensemble/generate_stream", b'{"text_input":"x","max_tokens":1,"foo":[1]}')
    assert (status, json.loads(body)) == (
        400,
        {"error": "parameter 'foo' has invalid type. It should be either 'int', 'bool', or 'string'."},
    )

    # Through the gateway: a backend whose served model Triton lacks.
    with pytest.raises(openai.APIStatusError) as failed:
        client.completions.create(model=REAL_TRITON_MISSING_MODEL, prompt="x", max_tokens=2)
    assert (failed.value.status_code, failed.value.body["code"]) == (502, "upstream_error")
    # (model_not_found is nobody's fault: no backend failure is counted.)
    g = gateway_metrics(real_triton)
    assert metric(g, "gateway_requests_total", model=REAL_TRITON_MISSING_MODEL, outcome="upstream_error") == 1


# --- cancellation ----------------------------------------------------------------


def _post_raw(rt: RealTriton, prompt: str, max_tokens: int, stream: bool) -> socket.socket:
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": stream}).encode()
    host, port = rt.gateway.addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TENANT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return s


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_inside_the_model(real_triton, stream):
    wait_idle(real_triton)
    prompt = unique(f"cancel stream={stream}")
    s = _post_raw(real_triton, prompt, 200, stream)  # 200 tokens: 5 s
    if stream:
        got = b""
        while text_of(3).encode() not in got.replace(b'"', b""):
            # Wait for some tokens (the words come one per chunk).
            data = s.recv(65536)
            assert data, got
            got += data
            if got.count(b'"text":') >= 3:
                break
    else:
        time.sleep(0.3)  # about 12 tokens in
    closed = time.monotonic()
    s.close()
    event = event_for(real_triton, prompt)
    seen = time.monotonic() - closed
    assert event["event"] == "cancelled", event
    assert event["stream"] is True  # the gateway always streams from Triton
    assert 0 < event["tokens"] < 200, event
    assert seen < 2.0, seen
    print(f"\nstream={stream}: the model saw is_cancelled() after {event['tokens']} tokens, recorded {seen:.3f}s after the close")


# --- pressure and a full queue -----------------------------------------------------


def test_pressure_and_a_full_queue(real_triton, client):
    """One request runs, two wait in Triton's queue (max_queue_size 2): the
    gateway reads nv_inference_pending_request_count as its backend's queue
    depth, and a fourth request gets Triton's 503, which the client sees as
    503 `overloaded` with Retry-After. Each request runs 2.5 s (100 tokens at
    25 ms), so the two stay queued for over two of the gateway's 1 s metric
    scrapes, even when the machine is slow to start the clients."""
    wait_idle(real_triton)
    results: list = []

    def one(i: int) -> None:
        try:
            done = client.completions.create(model=MODEL, prompt=unique(f"load {i}"), max_tokens=100)
            results.append(done.usage.completion_tokens)
        except BaseException as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    depth = 0.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        depth = metric(gateway_metrics(real_triton), "gateway_backend_queue_depth", backend=REAL_TRITON_BACKEND)
        if depth == 2 and pending(real_triton) == 2:
            break
        time.sleep(0.02)
    assert depth == 2, f"gateway_backend_queue_depth {depth}, Triton pending {pending(real_triton)}"

    before = failures(real_triton, "overloaded")
    status, _, body = http_post(
        f"{real_triton.gateway.base_url}/completions",
        json.dumps({"model": MODEL, "prompt": "one too many", "max_tokens": 4}).encode(),
        {"Authorization": f"Bearer {TENANT_KEY}"},
    )
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert failures(real_triton, "overloaded") == before + 1
    for t in threads:
        t.join(timeout=20)
    assert results == [100, 100, 100]
