"""A stream survives its engine: two REAL vLLMs (the same CPU "tiny-llama",
docs/real-engine.md) behind one gateway whose model has
`continue_on_failure = true`; the vLLM serving a streamed request at
temperature 0 is killed (SIGKILL, by pid) after the client read some tokens,
and the client's stream goes on on the other one.

The survivor is the shared engine of test_real_vllm.py (`REAL_VLLM_URL`);
the victim is its own engine (`REAL_VLLM_VICTIM_URL`, started by
scripts/test; else, outside CI, started here), which this test keeps frozen
(SIGSTOP) but for short slices until its first token reached the client,
then kills (SIGKILL), both sent to its process group by the pid in
start.sh's pid file.

Checked: one stream (one role chunk, no error, one finish reason, one usage
chunk, one [DONE]); its text is the victim's first N tokens followed by the
survivor's continuation, with nothing lost or repeated (the same generation
redone straight on the survivor); the survivor was asked exactly the prompt
plus the N delivered ids (its prompt-token counter grew by the prompt's
tokens plus N, its generation counter by the rest); the client's usage and
the ledger's charge are exactly the tokens the client received.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ADMIN_KEY,
    CACHED_INPUT_USD_PER_MTOK,
    INPUT_USD_PER_MTOK,
    OUTPUT_USD_PER_MTOK,
    REAL_CONTEXT_WINDOW,
    REAL_ENGINE_DIR,
    REAL_ENGINE_START_TIMEOUT_S,
    REAL_MODEL,
    REAL_VLLM_FLAGS,
    SHUTDOWN_GRACE_MS,
    TENANT_ID,
    TENANT_KEY,
    TOKENIZERS,
    RealVllm,
    _real_engine_paths,
    _run_gateway,
)

VICTIM = "vllm-victim"
SURVIVOR = "vllm-survivor"
MAX_TOKENS = 160
# Tokens the client reads before the victim (frozen, see _start_on_victim)
# is killed (SIGKILL to its process group: vLLM's API server and its engine
# core).
READ_BEFORE_KILL = 1
# How long the frozen victim runs at a time until its first token.
SLICE_S = 0.01
# Prompts tried until one is routed to the victim (prefix affinity picks a
# backend per prompt; the order is fixed, so a run is repeatable).
PROMPTS = [f"Tell me a story about the number {i}." for i in range(12)]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict[str, str] | None = None) -> str:
    with _NO_PROXY.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        assert r.status == 200
        return r.read().decode("utf-8")


def http_post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _NO_PROXY.open(request, timeout=120) as r:
        assert r.status == 200
        return json.load(r)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series = head[len(name) :]
        if series and not series.startswith("{"):
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def _config(victim: str, survivor: str) -> str:
    return f"""\
# Written by tests/python/test_real_vllm_continue.py.
[server]
listen = "127.0.0.1:0"
admin_key = "{ADMIN_KEY}"
shutdown_grace_ms = {SHUTDOWN_GRACE_MS}
first_token_timeout_ms = 60000
idle_timeout_ms = 30000

[[tenants]]
id = "{TENANT_ID}"
api_key = "{TENANT_KEY}"

[[models]]
name = "{REAL_MODEL}"
tokenizer = "{TOKENIZERS / "tinyllama.json"}"
chat_template = "{TOKENIZERS / "tinyllama.chat_template.jinja"}"
add_bos_token = true
context_window = {REAL_CONTEXT_WINDOW}
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = 64
continue_on_failure = true
max_continuations = 1

[[backends]]
name = "{VICTIM}"
engine = "vllm"
url = "{victim}"
model = "{REAL_MODEL}"

[[backends]]
name = "{SURVIVOR}"
engine = "vllm"
url = "{survivor}"
model = "{REAL_MODEL}"
"""


def _pid_of(port: str) -> int:
    """The pid of our vLLM on `port`, from start.sh's pid file, checked
    against its command line; it leads its own process group (setsid)."""
    home = Path(os.environ.get("REAL_ENGINE_HOME", Path.home() / ".cache" / "gateway-real-engine"))
    pid = int((home / "run" / f"vllm-{port}.pid").read_text().strip())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--port" in argv and argv[argv.index(b"--port") + 1] == port.encode(), argv
    assert os.getpgid(pid) == pid
    return pid


class Pair:
    def __init__(self, victim: str, victim_pid: int, survivor: str, gateway) -> None:
        self.victim = victim
        self.victim_pid = victim_pid
        self.survivor = survivor
        self.gateway = gateway


@pytest.fixture(scope="module")
def pair(real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    victim = os.environ.get("REAL_VLLM_VICTIM_URL", "").rstrip("/")
    started: str | None = None
    if not victim:
        if os.environ.get("CI"):
            pytest.fail("REAL_VLLM_VICTIM_URL is not set: under CI scripts/test starts the engine")
        _real_engine_paths()
        started = subprocess.run(
            [str(REAL_ENGINE_DIR / "free-port")], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()
        subprocess.run(
            ["bash", str(REAL_ENGINE_DIR / "start.sh"), started, *REAL_VLLM_FLAGS],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            timeout=REAL_ENGINE_START_TIMEOUT_S,
        )
        victim = f"http://127.0.0.1:{started}"
    try:
        pid = _pid_of(victim.rsplit(":", 1)[-1])
        workdir = tmp_path_factory.mktemp("continue-gateway")
        config_path = workdir / "gateway.toml"
        config_path.write_text(_config(victim, real_vllm.url), encoding="utf-8")
        run = _run_gateway(["--config", str(config_path)], workdir, config_path)
        gw = next(run)
        yield Pair(victim, pid, real_vllm.url, gw)
        next(run, None)
    finally:
        if started is not None:
            subprocess.run(["bash", str(REAL_ENGINE_DIR / "stop.sh"), started], check=False)


class Sse:
    """A streamed chat completion read event by event, straight off the
    socket (so `[DONE]` and every chunk are seen as sent). The request is
    sent at once; the answer's head is read by `begin` (the gateway sends
    it with the first token)."""

    def __init__(self, addr: str, body: dict) -> None:
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        self.conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TENANT_KEY}"},
        )
        self.response: http.client.HTTPResponse | None = None

    def readable(self, timeout: float) -> bool:
        """Whether the gateway sent something within `timeout` seconds."""
        assert self.conn.sock is not None
        return bool(select.select([self.conn.sock], [], [], timeout)[0])

    def begin(self) -> None:
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()

    def next(self) -> str | None:
        """The next event's data, None at the end of the body."""
        assert self.response is not None
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.decode("utf-8").rstrip("\r\n")
            if line.startswith("data: "):
                return line[len("data: ") :]

    def close(self) -> None:
        self.conn.close()


def _request(content: str) -> dict:
    return {
        "model": REAL_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _inflight(pair: Pair, backend: str) -> float:
    return metric(http_get(f"http://{pair.gateway.addr}/metrics"), "gateway_inflight_requests", backend=backend)


def _admin_usage(pair: Pair) -> dict:
    return json.loads(
        http_get(
            f"http://{pair.gateway.addr}/admin/tenants/{TENANT_ID}/usage",
            {"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    )


def _engine_counts(url: str) -> tuple[float, float]:
    text = http_get(f"{url}/metrics")
    return (
        metric(text, "vllm:prompt_tokens_total", model_name=REAL_MODEL),
        metric(text, "vllm:generation_tokens_total", model_name=REAL_MODEL),
    )


def _wait_idle(pair: Pair, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _admin_usage(pair)["reserved_usd"] != 0 or _inflight(pair, VICTIM) + _inflight(pair, SURVIVOR) != 0:
        assert time.monotonic() < deadline, "the gateway did not settle"
        time.sleep(0.05)


def _serving(pair: Pair, timeout: float = 10.0) -> str:
    """The backend the gateway started the one request on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for backend in (VICTIM, SURVIVOR):
            if _inflight(pair, backend) == 1:
                return backend
        time.sleep(0.01)
    raise AssertionError("the request was not routed")


def _start_on_victim(pair: Pair) -> tuple[str, Sse, list[dict]]:
    """A stream that the victim serves, with its first READ_BEFORE_KILL
    tokens read, and the victim frozen.

    The victim is frozen (SIGSTOP to its process group) before the request
    is sent and let run only in slices of SLICE_S until the gateway starts
    answering (it does with the first token): a tiny model on an idle CPU
    writes hundreds of tokens a second, and vLLM sends them in bursts, so
    one let run freely could finish the whole answer before a kill."""
    for content in PROMPTS:
        os.killpg(pair.victim_pid, signal.SIGSTOP)
        sse = Sse(pair.gateway.addr, _request(content))
        if _serving(pair) != VICTIM:
            os.killpg(pair.victim_pid, signal.SIGCONT)
            sse.begin()
            while sse.next() is not None:
                pass
            sse.close()
            _wait_idle(pair)
            continue
        slices = 0
        while not sse.readable(0.0):
            os.killpg(pair.victim_pid, signal.SIGCONT)
            time.sleep(SLICE_S)
            os.killpg(pair.victim_pid, signal.SIGSTOP)
            slices += 1
            assert slices < 2000, "the victim produced no token"
            # What it sent in its slice reaches the client.
            sse.readable(0.05)
        sse.begin()
        chunks: list[dict] = []
        tokens = 0
        while tokens < READ_BEFORE_KILL:
            data = sse.next()
            assert data is not None and data != "[DONE]", data
            chunk = json.loads(data)
            chunks.append(chunk)
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                tokens += 1
        print(f"\n{PROMPTS.index(content)}: first token after {slices} slices")
        return content, sse, chunks
    pytest.fail(f"none of {len(PROMPTS)} prompts was routed to {VICTIM}")


def test_a_stream_survives_its_engine_killed(pair: Pair) -> None:
    before_usage = _admin_usage(pair)
    content, sse, chunks = _start_on_victim(pair)
    # The survivor's counters just before the kill (it serves nothing else).
    before_prompt, before_generated = _engine_counts(pair.survivor)
    os.killpg(pair.victim_pid, signal.SIGKILL)
    killed = time.monotonic()
    events: list[str] = [json.dumps(c) for c in chunks]
    while True:
        data = sse.next()
        if data is None:
            break
        events.append(data)
    sse.close()
    print(f"the rest in {time.monotonic() - killed:.3f}s")

    # One stream: [DONE] once and last; no error; one role chunk, one
    # finish reason (length: ignore_eos), one usage chunk.
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    parsed = [json.loads(e) for e in events[:-1]]
    assert not [p for p in parsed if "error" in p], parsed
    roles = [p for p in parsed if p["choices"] and "role" in p["choices"][0]["delta"]]
    assert len(roles) == 1 and roles[0] is parsed[0]
    finishes = [p["choices"][0]["finish_reason"] for p in parsed if p["choices"] and p["choices"][0].get("finish_reason")]
    assert finishes == ["length"]
    usages = [p["usage"] for p in parsed if p.get("usage")]
    assert len(usages) == 1 and parsed[-1].get("usage"), parsed[-3:]
    usage = usages[0]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in parsed if p["choices"])
    prompt = usage["prompt_tokens"]
    assert usage["completion_tokens"] == MAX_TOKENS

    # The victim failed the stream mid-way and the survivor went on with it.
    metrics = http_get(f"http://{pair.gateway.addr}/metrics")
    assert metric(metrics, "gateway_continuations_total", model=REAL_MODEL, **{"from": VICTIM, "to": SURVIVOR}) == 1

    # The survivor was asked the prompt plus the N delivered ids, and
    # generated the rest.
    after_prompt, after_generated = _engine_counts(pair.survivor)
    delivered = int(after_prompt - before_prompt) - prompt
    rest = int(after_generated - before_generated)
    print(f"\nprompt {prompt} tokens; {delivered} from {VICTIM}, {rest} from {SURVIVOR}")
    assert delivered >= READ_BEFORE_KILL
    assert rest >= 1
    assert delivered + rest == MAX_TOKENS

    # Nothing lost or repeated: the same generation, redone straight on the
    # survivor, is the victim's N tokens followed by the continuation from
    # prompt + those N ids.
    reference = {k: v for k, v in _request(content).items() if k not in ("stream", "stream_options")}
    first = http_post_json(
        f"{pair.survivor}/v1/chat/completions",
        {**reference, "max_tokens": delivered, "return_token_ids": True},
    )
    first_ids = first["choices"][0]["token_ids"]
    prompt_ids = first["prompt_token_ids"]
    assert len(prompt_ids) == prompt and len(first_ids) == delivered
    second = http_post_json(
        f"{pair.survivor}/v1/completions",
        {
            "model": REAL_MODEL,
            "prompt": prompt_ids + first_ids,
            "max_tokens": rest,
            "temperature": 0,
            "ignore_eos": True,
        },
    )
    assert second["usage"]["prompt_tokens"] == prompt + delivered
    assert text == first["choices"][0]["message"]["content"] + second["choices"][0]["text"]

    # The re-prefill is counted as the operator's.
    assert metric(metrics, "gateway_continuation_prefill_tokens_total", model=REAL_MODEL) == prompt + delivered

    # The ledger charges exactly what the client received, once.
    _wait_idle(pair)
    after_usage = _admin_usage(pair)
    assert after_usage["requests"] - before_usage["requests"] == 1
    assert after_usage["prompt_tokens"] - before_usage["prompt_tokens"] == prompt
    assert after_usage["completion_tokens"] - before_usage["completion_tokens"] == MAX_TOKENS
    picos_per_token = {"in": round(INPUT_USD_PER_MTOK * 1e6), "out": round(OUTPUT_USD_PER_MTOK * 1e6)}
    assert after_usage["spent_picousd"] - before_usage["spent_picousd"] == (
        prompt * picos_per_token["in"] + MAX_TOKENS * picos_per_token["out"]
    )
