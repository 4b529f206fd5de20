"""The official `openai` SDK through the `gateway` binary to every engine kind.

The `engine-sims` binary (crate `gateway-sims`, built next to `gateway`:
`cargo build -p gateway-sims --bin engine-sims`) runs one wire-faithful
simulator per engine kind; the gateway gets a config with ONE backend per
kind (vllm, sglang, trtllm, triton, nim, dynamo, openai) and one model per
backend. For every model the SDK makes one non-streamed and one streamed
request; the simulators' texts are deterministic (the same token texts, in
order, for every engine), so the text, the token counts and the finish
reason are asserted exactly.

Triton takes text prompts only (the gateway renders no chat templates for
engines, docs/engines.md), so its model is driven through the legacy
completions route, and a chat request to it is checked to be refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import secrets
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import (
    ADMIN_KEY,
    CACHED_INPUT_USD_PER_MTOK,
    INPUT_USD_PER_MTOK,
    OUTPUT_USD_PER_MTOK,
    SHUTDOWN_GRACE_MS,
    STARTUP_TIMEOUT_S,
    TENANT_ID,
    TENANT_KEY,
    Gateway,
    _run_gateway,
    gateway_bin,
)

KINDS = ["vllm", "sglang", "trtllm", "triton", "nim", "dynamo", "openai"]

# What every simulator generates (gateway_sims::vocab): these texts in
# order, repeated; 16 tokens when max_tokens allows (then `stop`), else
# max_tokens tokens (then `length`).
VOCABULARY = ["Hel", "lo", " wor", "ld", ",", " é", "🙂", " 日本", " sea", "!"]
NATURAL_TOKENS = 16
SHORT = 5  # below NATURAL_TOKENS: ends by `length`
LONG = 64  # above it: ends by `stop`

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
# The simulators count 3 + words per chat message.
CHAT_PROMPT_TOKENS = 3 + 5
PROMPT = "Once upon a time"
# Triton's simulator counts 1 + words of `text_input`.
TEXT_PROMPT_TOKENS = 1 + 4

NIM_KEY_ENV = "GATEWAY_TEST_NIM_API_KEY"
SIMS_STOP_BOUND_S = 10.0


def text_of(n: int) -> str:
    return "".join(VOCABULARY[i % len(VOCABULARY)] for i in range(n))


def model_of(kind: str) -> str:
    return f"sim-{kind}"


def engine_sims_bin() -> Path:
    """`ENGINE_SIMS_BIN`, else `engine-sims` next to the gateway binary
    (the same cargo target directory)."""
    path = os.environ.get("ENGINE_SIMS_BIN")
    if path:
        return Path(path).resolve()
    return gateway_bin().parent / "engine-sims"


@dataclasses.dataclass
class Sims:
    """The running `engine-sims`: the URLs it printed, by kind."""

    urls: dict[str, list[str]]
    nim_key: str
    process: subprocess.Popen[str]


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sims]:
    binary = engine_sims_bin()
    if not binary.is_file():
        pytest.fail(
            f"no engine-sims binary at {binary}: build it with "
            "`cargo build -p gateway-sims --bin engine-sims` or set ENGINE_SIMS_BIN"
        )
    nim_key = f"nvapi-pytest-{secrets.token_hex(8)}"
    stderr_path = tmp_path_factory.mktemp("engine-sims") / "stderr.txt"
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        # stdin stays open (a pipe): engine-sims stops when it closes.
        process = subprocess.Popen(
            [str(binary), "--nim-api-key", nim_key, *KINDS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def fail(message: str) -> None:
        process.kill()
        process.wait()
        pytest.fail(f"{message}; stderr:\n{stderr_path.read_text(encoding='utf-8', errors='replace')}")

    urls: dict[str, list[str]] = {}
    order: list[str] = []
    while True:
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            fail(f"engine-sims printed no `ready` within {STARTUP_TIMEOUT_S}s")
        if line is None:
            fail("engine-sims ended before `ready`")
        if line == "ready":
            break
        kind, *addresses = line.split(" ")
        order.append(kind)
        urls[kind] = addresses
    # One line per kind, in the order given; triton with its metrics URL.
    assert order == KINDS
    for kind, addresses in urls.items():
        expected = 2 if kind == "triton" else 1
        assert len(addresses) == expected, (kind, addresses)
        assert all(a.startswith("http://127.0.0.1:") for a in addresses), addresses
    assert urls["triton"][1].endswith("/metrics")

    yield Sims(urls=urls, nim_key=nim_key, process=process)

    # Teardown: SIGTERM, exit 0 in bounded time.
    assert process.poll() is None, f"engine-sims exited early with {process.returncode}"
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=SIMS_STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"engine-sims still running {SIMS_STOP_BOUND_S}s after SIGTERM (killed it)")
    assert code == 0, f"engine-sims exited {code} after SIGTERM"


def config_text(sims: Sims) -> str:
    out = [
        f"""\
# Written by tests/python/test_all_engines.py: one backend per engine kind.
[server]
listen = "127.0.0.1:0"
admin_key = "{ADMIN_KEY}"
shutdown_grace_ms = {SHUTDOWN_GRACE_MS}
first_token_timeout_ms = 10000
idle_timeout_ms = 10000

[[tenants]]
id = "{TENANT_ID}"
api_key = "{TENANT_KEY}"
"""
    ]
    for kind in KINDS:
        out.append(
            f"""
[[models]]
name = "{model_of(kind)}"
context_window = 4096
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = {LONG}
"""
        )
    for kind in KINDS:
        url = sims.urls[kind][0]
        backend = f"""
[[backends]]
name = "{kind}-0"
engine = "{kind}"
url = "{url}"
model = "{model_of(kind)}"
served_model = "{'ensemble' if kind == 'triton' else 'm'}"
"""
        if kind == "triton":
            backend += f'metrics_url = "{sims.urls[kind][1]}"\n'
        if kind == "nim":
            backend += f'api_key_env = "{NIM_KEY_ENV}"\n'
        out.append(backend)
    return "".join(out)


@pytest.fixture(scope="module")
def config_path(sims: Sims, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("all-engines") / "gateway.toml"
    path.write_text(config_text(sims), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def nim_key_env(sims: Sims) -> Iterator[None]:
    """The NIM key in this process's environment, which the gateway
    processes inherit; removed afterwards."""
    previous = os.environ.get(NIM_KEY_ENV)
    os.environ[NIM_KEY_ENV] = sims.nim_key
    yield
    if previous is None:
        os.environ.pop(NIM_KEY_ENV, None)
    else:
        os.environ[NIM_KEY_ENV] = previous


@pytest.fixture(scope="module")
def gateway(config_path: Path, nim_key_env: None) -> Iterator[Gateway]:
    run = _run_gateway(
        ["--config", str(config_path), "--listen", "127.0.0.1:0"], config_path.parent, config_path
    )
    yield next(run)
    next(run, None)  # the gateway's teardown (and its checks)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=10.0
    ) as c:
        yield c


# ---------------------------------------------------------------------------


def test_config_with_every_engine_checks(config_path: Path, nim_key_env: None):
    done = subprocess.run(
        [str(gateway_bin()), "--check-config", str(config_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    engines = [line.split(" = ")[1].strip('"') for line in config_path.read_text().splitlines()
               if line.startswith("engine = ")]
    assert engines == KINDS


def test_nim_simulator_wants_the_key(sims: Sims):
    """The NIM simulator refuses a request without the key, so the gateway's
    answers below prove it sent `api_key_env`'s value."""
    body = json.dumps({"model": "m", "stream": True, "messages": MESSAGES}).encode()
    request = urllib.request.Request(
        f"{sims.urls['nim'][0]}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def check_usage(usage, *, prompt_tokens: int, completion_tokens: int) -> None:
    assert usage is not None
    assert usage.prompt_tokens == prompt_tokens
    assert usage.completion_tokens == completion_tokens
    assert usage.total_tokens == prompt_tokens + completion_tokens


CHAT_KINDS = [k for k in KINDS if k != "triton"]


@pytest.mark.parametrize("kind", CHAT_KINDS)
def test_chat_non_streaming(client: openai.OpenAI, kind: str):
    model = model_of(kind)
    done = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=SHORT)
    assert done.object == "chat.completion"
    assert done.model == model
    assert len(done.choices) == 1
    choice = done.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == text_of(SHORT)
    assert choice.finish_reason == "length"
    check_usage(done.usage, prompt_tokens=CHAT_PROMPT_TOKENS, completion_tokens=SHORT)


@pytest.mark.parametrize("kind", CHAT_KINDS)
def test_chat_streaming_with_usage(client: openai.OpenAI, kind: str):
    model = model_of(kind)
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=LONG, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, finish, usage = [], None, None
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == model
        if chunk.usage is not None:
            assert usage is None, "usage sent twice"
            assert chunk.choices == []
            usage = chunk.usage
            continue
        assert len(chunk.choices) == 1
        assert finish is None, "a chunk after the one with finish_reason"
        if chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason
    assert chunks[-1].usage is not None, "the usage chunk is the last one"
    assert "".join(text) == text_of(NATURAL_TOKENS)
    assert finish == "stop"
    check_usage(usage, prompt_tokens=CHAT_PROMPT_TOKENS, completion_tokens=NATURAL_TOKENS)


def test_triton_completion_non_streaming(client: openai.OpenAI):
    model = model_of("triton")
    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=SHORT)
    assert done.object == "text_completion"
    assert done.model == model
    assert len(done.choices) == 1
    assert done.choices[0].text == text_of(SHORT)
    assert done.choices[0].finish_reason == "length"
    check_usage(done.usage, prompt_tokens=TEXT_PROMPT_TOKENS, completion_tokens=SHORT)


def test_triton_completion_streaming_with_usage(client: openai.OpenAI):
    model = model_of("triton")
    stream = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=LONG, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, finish, usage = [], None, None
    for chunk in chunks:
        assert chunk.object == "text_completion"
        assert chunk.model == model
        if chunk.usage is not None:
            assert usage is None, "usage sent twice"
            assert chunk.choices == []
            usage = chunk.usage
            continue
        assert len(chunk.choices) == 1
        assert finish is None, "a chunk after the one with finish_reason"
        text.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason
    assert chunks[-1].usage is not None, "the usage chunk is the last one"
    assert "".join(text) == text_of(NATURAL_TOKENS)
    assert finish == "stop"
    check_usage(usage, prompt_tokens=TEXT_PROMPT_TOKENS, completion_tokens=NATURAL_TOKENS)


def test_triton_refuses_chat(client: openai.OpenAI):
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=model_of("triton"), messages=MESSAGES, max_tokens=SHORT)
    assert refused.value.status_code == 400
    assert refused.value.body["code"] == "invalid_request"



def test_zz_every_backend_served_its_requests(gateway: Gateway):
    """Runs last (file order): each backend, and only it, gave its model's
    two requests a first token (the refused chat to triton never started)."""
    with urllib.request.urlopen(f"http://{gateway.addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {
        line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_time_to_first_token_seconds_count{")
    }
    assert counts == {f'model="{model_of(k)}",backend="{k}-0"': 2.0 for k in KINDS}
