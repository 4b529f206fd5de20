"""Runs the built `gateway` binary for the tests in this folder.

The `gateway` fixture (one per test session) writes a TOML config into a
temporary directory, starts the binary named by the environment variable
`GATEWAY_BIN` (default `target/debug/gateway`; a relative path is taken from
the repository root) with `--config`, reads the listen address from its first
stdout line, and at the end sends SIGTERM and checks that it exits 0 in time.

Build the binary first: `cargo build -p gateway-examples --bin gateway`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

TENANT_ID = "pytest"
TENANT_KEY = "sk-pytest-tenant"
ADMIN_KEY = "admin-pytest"
MODEL = "sim-small"
CONTEXT_WINDOW = 512
# Every completion of the simulated engine is exactly this long when
# max_tokens allows it (min = max natural length).
NATURAL_TOKENS = 40
SIM_SEED = 7
# Prices in USD per million tokens, and the same in picodollars per token
# (the admin view's exact unit): 1 USD/Mtok = 1e6 pUSD/token.
INPUT_USD_PER_MTOK = 0.5
CACHED_INPUT_USD_PER_MTOK = 0.05
OUTPUT_USD_PER_MTOK = 1.5

STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_GRACE_MS = 2000
# SIGTERM to exit: the grace period, plus the server's abort wait and
# connection-closing slack, plus a margin for a slow machine.
SHUTDOWN_BOUND_S = 15.0

CONFIG = f"""\
# Written by tests/python/conftest.py for one pytest session.
[server]
listen = "127.0.0.1:0"
admin_key = "{ADMIN_KEY}"
shutdown_grace_ms = {SHUTDOWN_GRACE_MS}
first_token_timeout_ms = 10000
idle_timeout_ms = 10000

[[tenants]]
id = "{TENANT_ID}"
api_key = "{TENANT_KEY}"

[[models]]
name = "{MODEL}"
context_window = {CONTEXT_WINDOW}
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = 64

[[backends]]
name = "sim-0"
engine = "sim"
model = "{MODEL}"

[backends.sim]
prefill_tokens_per_sec = 0          # instant
decode_tokens_per_sec = 5000.0      # 40 tokens in 8 ms
base_latency_ms = 0
seed = {SIM_SEED}
min_natural_tokens = {NATURAL_TOKENS}
max_natural_tokens = {NATURAL_TOKENS}
"""


@dataclasses.dataclass
class Gateway:
    """A running gateway: its address (`127.0.0.1:PORT`) and process."""

    addr: str
    process: subprocess.Popen[str]
    config_path: Path
    stdout_lines: list[str]

    @property
    def base_url(self) -> str:
        return f"http://{self.addr}/v1"


def gateway_bin() -> Path:
    path = Path(os.environ.get("GATEWAY_BIN", "target/debug/gateway"))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def _pump(stream, lines: list[str], first: queue.Queue[str | None]) -> None:
    """Reads the server's stdout to the end (so the pipe never fills),
    handing the first line to `first`."""
    handed = False
    for line in stream:
        lines.append(line.rstrip("\n"))
        if not handed:
            first.put(line.rstrip("\n"))
            handed = True
    if not handed:
        first.put(None)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("gateway")
    config_path = workdir / "gateway.toml"
    config_path.write_text(CONFIG, encoding="utf-8")
    yield from _run_gateway(["--config", str(config_path)], workdir, config_path)


@pytest.fixture(scope="session")
def default_gateway(tmp_path_factory: pytest.TempPathFactory):
    """The binary's embedded default (as `cargo run --bin gateway` starts
    it), on a free port instead of 8080."""
    workdir = tmp_path_factory.mktemp("default-gateway")
    yield from _run_gateway(["--listen", "127.0.0.1:0"], workdir, None)


def _run_gateway(args: list[str], workdir: Path, config_path: Path | None):
    binary = gateway_bin()
    if not binary.is_file():
        pytest.fail(
            f"no gateway binary at {binary}: build it with "
            "`cargo build -p gateway-examples --bin gateway` or set GATEWAY_BIN"
        )
    stderr_path = workdir / "stderr.txt"

    with open(stderr_path, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            encoding="utf-8",
        )
    lines: list[str] = []
    first: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(process.stdout, lines, first), daemon=True)
    pump.start()

    def stderr_text() -> str:
        return stderr_path.read_text(encoding="utf-8", errors="replace")

    try:
        line = first.get(timeout=STARTUP_TIMEOUT_S)
    except queue.Empty:
        process.kill()
        process.wait()
        pytest.fail(f"gateway printed nothing within {STARTUP_TIMEOUT_S}s; stderr:\n{stderr_text()}")
    prefix = "gateway listening on http://"
    if line is None or not line.startswith(prefix):
        process.kill()
        process.wait()
        pytest.fail(f"unexpected first stdout line {line!r}; stderr:\n{stderr_text()}")
    addr = line[len(prefix) :].strip()

    yield Gateway(addr=addr, process=process, config_path=config_path, stdout_lines=lines)

    # Teardown: a graceful stop, exit code 0, in bounded time.
    if process.poll() is not None:
        pytest.fail(f"gateway exited early with {process.returncode}; stderr:\n{stderr_text()}")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=SHUTDOWN_BOUND_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"gateway still running {SHUTDOWN_BOUND_S}s after SIGTERM (killed it)")
    took = time.monotonic() - started
    pump.join(timeout=5)
    assert code == 0, f"gateway exited {code} after SIGTERM; stderr:\n{stderr_text()}"
    print(f"\ngateway stopped {took:.2f}s after SIGTERM; stdout: {lines}")


# ---------------------------------------------------------------------------
# A REAL vLLM (the CPU build serving the random "tiny-llama", see
# docs/real-engine.md) behind the `gateway` binary, for test_real_vllm.py.
#
# The engine: `REAL_VLLM_URL` (http://127.0.0.1:PORT, as scripts/test exports
# it) if set; else, under CI, a failure (never a skip); else one started here
# with scripts/real-engine/ (setup.sh, then start.sh PORT --max-num-seqs 4)
# and stopped at the end of the session.

REAL_ENGINE_DIR = REPO_ROOT / "scripts" / "real-engine"
REAL_MODEL = "tiny-llama"

# Prompts whose estimate the real-engine tests compare with the engine's own
# count (multi-byte text, whitespace, several turns): (test id, request).
ESTIMATE_PROMPTS = [
    ("completion: multi-byte", {"prompt": "Grüße aus Köln — 東京タワー 🚀 naïve café"}),
    ("completion: spaces and newlines", {"prompt": "  two leading spaces\n\nand a tab\there  "}),
    ("chat: multi-byte user", {"messages": [{"role": "user", "content": "Ünïcödé: 日本語のテキスト, emoji 🎉🎉, Ελληνικά"}]}),
    (
        "chat: several turns",
        {
            "messages": [
                {"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "And of Germany?\nBe brief."},
                {"role": "assistant", "content": " Berlin "},
                {"role": "user", "content": "Thanks!"},
            ]
        },
    ),
]

# Token chunks a client that resets its connection mid-stream may be charged
# for beyond those it read: what the gateway wrote after the client's last
# recv(). The gateway writes the chunks that arrive together in one write
# (server/body.rs), and an engine on a loaded machine sends them in bursts
# (vLLM emits the tokens of several steps at once when its output loop lags),
# so one write can hold several; a CI run saw 2.
RESET_SLACK = 3
REAL_BACKEND = "vllm-0"
REAL_CONTEXT_WINDOW = 2048
REAL_ENGINE_START_TIMEOUT_S = 240.0


@dataclasses.dataclass
class RealVllm:
    """A real vLLM (`url`, `http://127.0.0.1:PORT`) and a gateway in front
    of it, configured by `config` (its text). `log_path` is the engine's log
    when it is on this machine under the real-engine cache (None when
    unknown)."""

    url: str
    gateway: Gateway
    log_path: Path | None
    started_here: bool
    config: str


def _real_engine_paths() -> dict[str, str]:
    """Runs setup.sh (warm: a fraction of a second, offline) and returns its
    KEY=value lines."""
    out = subprocess.run(
        ["bash", str(REAL_ENGINE_DIR / "setup.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


TOKENIZERS = REPO_ROOT / "fixtures" / "tokenizers"
# The tool-aware template (fixtures/README.md): renders like TinyLlama's own
# without tools, and writes the tools and tool calls Hermes-style.
TOOLS_CHAT_TEMPLATE = TOKENIZERS / "tinyllama.tools.chat_template.jinja"


def _config_head(fixture: str, first_token_timeout_ms: int = 60000, idle_timeout_ms: int = 30000) -> str:
    """The `[server]` and `[[tenants]]` sections of a real engine's gateway
    config (written by the fixture `fixture` for one pytest session)."""
    return f"""\
# Written by tests/python/conftest.py ({fixture}) for one pytest session.
[server]
listen = "127.0.0.1:0"
admin_key = "{ADMIN_KEY}"
shutdown_grace_ms = {SHUTDOWN_GRACE_MS}
first_token_timeout_ms = {first_token_timeout_ms}
idle_timeout_ms = {idle_timeout_ms}

[[tenants]]
id = "{TENANT_ID}"
api_key = "{TENANT_KEY}"
"""


def _tiny_llama_config(
    fixture: str,
    *,
    engine: str,
    backend: str,
    url: str,
    tokenizer: Path,
    chat_template: Path,
    add_bos_token: bool,
) -> str:
    """A gateway with one tiny-llama model (exact estimate with `tokenizer`
    and `chat_template`, the test prices) on one backend of `engine`."""
    return _config_head(fixture) + f"""
[[models]]
name = "{REAL_MODEL}"
tokenizer = "{tokenizer}"
chat_template = "{chat_template}"
add_bos_token = {"true" if add_bos_token else "false"}
context_window = {REAL_CONTEXT_WINDOW}
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = 64

[[backends]]
name = "{backend}"
engine = "{engine}"
url = "{url}"
model = "{REAL_MODEL}"
served_model = "{REAL_MODEL}"
"""


def _real_vllm_config(
    url: str,
    chat_template: Path = TOKENIZERS / "tinyllama.chat_template.jinja",
    tokenizer: Path = TOKENIZERS / "tinyllama.json",
) -> str:
    return _tiny_llama_config(
        "real_vllm",
        engine="vllm",
        backend=REAL_BACKEND,
        url=url,
        tokenizer=tokenizer,
        chat_template=chat_template,
        add_bos_token=True,
    )


# The engine's flags when a fixture starts it here (scripts/test passes the
# same ones).
REAL_VLLM_FLAGS = ["--max-num-seqs", "4"]
# A second engine with ngram speculative decoding and per-request draft
# counts in the usage chunk (docs/real-engine.md), for test_real_vllm_spec.py.
REAL_VLLM_SPEC_FLAGS = [
    "--speculative-config",
    '{"method":"ngram","num_speculative_tokens":3,"prompt_lookup_max":3}',
    "--per-request-spec-decode-metrics",
    "summary",
]


# A third engine with vLLM's tool-call parser (hermes), a reasoning parser
# that requests switch on (deepseek_v3, with a reasoning budget made usable by
# --reasoning-config) and the tool-aware template, for test_real_vllm_tools.py
# (docs/real-engine.md, "Tool calls, reasoning, logprobs"). scripts/test
# passes the same flags.
REAL_VLLM_TOOLS_FLAGS = [
    "--max-num-seqs",
    "4",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--reasoning-parser",
    "deepseek_v3",
    "--reasoning-config",
    '{"reasoning_start_str":"</s>","reasoning_end_str":"</think>"}',
    "--chat-template",
    str(TOOLS_CHAT_TEMPLATE),
]


# A fourth engine: the same random model served as an EMBEDDING model (vLLM's
# pooling runner, last-token pooling, normalized), for test_real_vllm_embed.py
# (docs/real-engine.md, "Embeddings"). scripts/test passes the same flags.
REAL_VLLM_EMBED_FLAGS = ["--runner", "pooling", "--convert", "embed", "--max-num-seqs", "4"]


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory):
    yield from _real_vllm("REAL_VLLM_URL", REAL_VLLM_FLAGS, tmp_path_factory)


@pytest.fixture(scope="session")
def real_vllm_spec(tmp_path_factory: pytest.TempPathFactory):
    """Like `real_vllm`, on an engine with speculative decoding
    (`REAL_VLLM_SPEC_URL`)."""
    yield from _real_vllm("REAL_VLLM_SPEC_URL", REAL_VLLM_SPEC_FLAGS, tmp_path_factory)


@pytest.fixture(scope="session")
def real_vllm_tools(tmp_path_factory: pytest.TempPathFactory):
    """Like `real_vllm`, on the engine with tool-call and reasoning parsers
    (`REAL_VLLM_TOOLS_URL`). The gateway counts with the model's own
    tokenizer (it has `<tool_call>` as one token, which the fixture spells in
    pieces) and the tool-aware template the engine renders."""
    model_dir = Path(_real_engine_paths()["REAL_ENGINE_MODEL_DIR"])
    config = functools.partial(
        _real_vllm_config, chat_template=TOOLS_CHAT_TEMPLATE, tokenizer=model_dir / "tokenizer.json"
    )
    yield from _real_vllm("REAL_VLLM_TOOLS_URL", REAL_VLLM_TOOLS_FLAGS, tmp_path_factory, config)


@pytest.fixture(scope="session")
def real_vllm_embed(tmp_path_factory: pytest.TempPathFactory):
    """Like `real_vllm`, on the engine serving the model for embeddings
    (`REAL_VLLM_EMBED_URL`)."""
    yield from _real_vllm("REAL_VLLM_EMBED_URL", REAL_VLLM_EMBED_FLAGS, tmp_path_factory)


def _real_vllm(
    env_var: str,
    flags: list[str],
    tmp_path_factory: pytest.TempPathFactory,
    config=_real_vllm_config,
):
    url = os.environ.get(env_var, "").rstrip("/")
    started_port: str | None = None
    log_dir: Path | None = None
    if url:
        log_dir = Path(os.environ.get("REAL_ENGINE_HOME", Path.home() / ".cache" / "gateway-real-engine")) / "logs"
    elif os.environ.get("CI"):
        pytest.fail(f"{env_var} is not set: under CI the real-vLLM suite must run (scripts/test starts the engine)")
    else:
        paths = _real_engine_paths()
        log_dir = Path(paths["REAL_ENGINE_LOG_DIR"])
        started_port = subprocess.run(
            [str(REAL_ENGINE_DIR / "free-port")], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()
        try:
            subprocess.run(
                ["bash", str(REAL_ENGINE_DIR / "start.sh"), started_port, *flags],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
                timeout=REAL_ENGINE_START_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            subprocess.run(["bash", str(REAL_ENGINE_DIR / "stop.sh"), started_port], check=False)
            pytest.fail(f"could not start the real vLLM on port {started_port}: {e}")
        url = f"http://127.0.0.1:{started_port}"

    port = url.rsplit(":", 1)[-1]
    log_path = log_dir / f"vllm-{port}.log" if log_dir is not None else None
    if log_path is not None and not log_path.is_file():
        log_path = None
    try:
        workdir = tmp_path_factory.mktemp("real-vllm-gateway")
        config_path = workdir / "gateway.toml"
        config_path.write_text(config(url), encoding="utf-8")
        run = _run_gateway(["--config", str(config_path)], workdir, config_path)
        gw = next(run)
        yield RealVllm(
            url=url, gateway=gw, log_path=log_path, started_here=started_port is not None, config=config(url)
        )
        next(run, None)  # the gateway's teardown (and its checks)
    finally:
        if started_port is not None:
            subprocess.run(["bash", str(REAL_ENGINE_DIR / "stop.sh"), started_port], check=False)


# ---------------------------------------------------------------------------
# A REAL NVIDIA Dynamo (ai-dynamo 1.6.1: its OpenAI-compatible frontend and
# one GPU-free mocker worker serving "tiny-llama"; docs/real-engine-dynamo.md)
# behind the `gateway` binary, for test_real_dynamo.py.
#
# The engine: `REAL_DYNAMO_URL` (http://127.0.0.1:PORT, as scripts/test
# exports it) if set; else, under CI, a failure (never a skip); else one
# started here with scripts/real-engine/dynamo/ (setup.sh, then start.sh PORT)
# and stopped at the end of the session.

REAL_DYNAMO_DIR = REAL_ENGINE_DIR / "dynamo"
REAL_DYNAMO_BACKEND = "dynamo-0"


@dataclasses.dataclass
class RealDynamo:
    """A real Dynamo frontend (`url`, `http://127.0.0.1:PORT`) with its
    mocker worker, and a gateway in front of it configured by `config`.
    `worker_metrics_url` is the mocker's own /metrics and the logs are the
    frontend's and the mocker's, when known (the instance runs on this
    machine under the real-engine cache); None otherwise."""

    url: str
    gateway: Gateway
    worker_metrics_url: str | None
    frontend_log: Path | None
    mocker_log: Path | None
    started_here: bool
    config: str


def _dynamo_tokenizer(workdir: Path) -> Path:
    """The fixture tokenizer as ai-dynamo 1.6.1 applies it (checked against
    its token ids, docs/real-engine-dynamo.md): text that follows a special
    token such as `</s>` also gets the `▁` prefix, as with the Metaspace
    scheme `always`. The fixture says `first`, so a chat prompt counts one
    token less per message with it than Dynamo does."""
    data = json.loads((TOKENIZERS / "tinyllama.json").read_text(encoding="utf-8"))
    pre = data["pre_tokenizer"]
    assert (pre["type"], pre["prepend_scheme"]) == ("Metaspace", "first"), pre
    pre["prepend_scheme"] = "always"
    path = workdir / "tinyllama.dynamo.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def _real_dynamo_config(url: str, tokenizer: Path) -> str:
    # Dynamo encodes a text prompt without BOS (add_bos_token = false).
    return _tiny_llama_config(
        "real_dynamo",
        engine="dynamo",
        backend=REAL_DYNAMO_BACKEND,
        url=url,
        tokenizer=tokenizer,
        chat_template=TOKENIZERS / "tinyllama.chat_template.jinja",
        add_bos_token=False,
    )


def _key_values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def real_dynamo(tmp_path_factory: pytest.TempPathFactory):
    url = os.environ.get("REAL_DYNAMO_URL", "").rstrip("/")
    worker_metrics_url = os.environ.get("REAL_DYNAMO_WORKER_METRICS_URL") or None
    home = Path(os.environ.get("REAL_ENGINE_HOME", Path.home() / ".cache" / "gateway-real-engine")) / "dynamo"
    started_port: str | None = None
    if url:
        pass
    elif os.environ.get("CI"):
        pytest.fail("REAL_DYNAMO_URL is not set: under CI the real-Dynamo suite must run (scripts/test starts it)")
    else:
        paths = _key_values(
            subprocess.run(
                ["bash", str(REAL_DYNAMO_DIR / "setup.sh")],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
                timeout=1800,
            ).stdout
        )
        home = Path(paths["REAL_DYNAMO_HOME"])
        started_port = subprocess.run(
            [str(REAL_ENGINE_DIR / "free-port")], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()
        try:
            started = _key_values(
                subprocess.run(
                    ["bash", str(REAL_DYNAMO_DIR / "start.sh"), started_port],
                    check=True,
                    stdout=subprocess.PIPE,
                    text=True,
                    timeout=REAL_ENGINE_START_TIMEOUT_S,
                ).stdout
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            subprocess.run(["bash", str(REAL_DYNAMO_DIR / "stop.sh"), started_port], check=False)
            pytest.fail(f"could not start the real Dynamo on port {started_port}: {e}")
        url = started["REAL_DYNAMO_URL"]
        worker_metrics_url = started["REAL_DYNAMO_WORKER_METRICS_URL"]

    port = url.rsplit(":", 1)[-1]
    written = home / "run" / f"dynamo-{port}.worker-metrics"
    if worker_metrics_url is None and written.is_file():
        worker_metrics_url = written.read_text(encoding="utf-8").strip() or None
    logs = [home / "logs" / f"dynamo-{port}.{part}.log" for part in ("frontend", "mocker")]
    frontend_log, mocker_log = (log if log.is_file() else None for log in logs)
    try:
        workdir = tmp_path_factory.mktemp("real-dynamo-gateway")
        config = _real_dynamo_config(url, _dynamo_tokenizer(workdir))
        config_path = workdir / "gateway.toml"
        config_path.write_text(config, encoding="utf-8")
        run = _run_gateway(["--config", str(config_path)], workdir, config_path)
        gw = next(run)
        yield RealDynamo(
            url=url,
            gateway=gw,
            worker_metrics_url=worker_metrics_url,
            frontend_log=frontend_log,
            mocker_log=mocker_log,
            started_here=started_port is not None,
            config=config,
        )
        next(run, None)  # the gateway's teardown (and its checks)
    finally:
        if started_port is not None:
            subprocess.run(["bash", str(REAL_DYNAMO_DIR / "stop.sh"), started_port], check=False)


# ---------------------------------------------------------------------------
# A REAL Triton Inference Server (the tritonserver binary of the
# nvidia-pytriton wheel with a TensorRT-LLM-shaped Python model "ensemble",
# docs/real-triton.md) behind the `gateway` binary, for test_real_triton.py.
#
# The engine: `REAL_TRITON_URL` (http://127.0.0.1:PORT, as scripts/test
# exports it) if set, with `REAL_TRITON_METRICS_URL` and
# `REAL_TRITON_EVENTS_DIR` (else read from the file start.sh left under the
# real-engine cache); else, under CI, a failure (never a skip); else one
# started here with scripts/real-engine/triton/ and stopped at the end.

REAL_TRITON_DIR = REAL_ENGINE_DIR / "triton"
REAL_TRITON_MODEL = "triton-ensemble"
REAL_TRITON_MISSING_MODEL = "triton-missing"  # served as a model Triton lacks
REAL_TRITON_BACKEND = "triton-0"
REAL_TRITON_START_TIMEOUT_S = 90.0


@dataclasses.dataclass
class RealTriton:
    """A real Triton (`url`, its `metrics_url`, and the folder where its model
    appends events.jsonl, when known) and a gateway in front of it."""

    url: str
    metrics_url: str
    events_dir: Path | None
    gateway: Gateway
    started_here: bool


def _real_triton_info(port: str) -> dict[str, str]:
    """What start.sh wrote for the server on `port` (empty if nothing)."""
    home = Path(os.environ.get("REAL_ENGINE_HOME", Path.home() / ".cache" / "gateway-real-engine"))
    path = home / "triton" / "run" / f"triton-{port}.env"
    return _key_values(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _real_triton_config(url: str, metrics_url: str) -> str:
    return _config_head("real_triton", first_token_timeout_ms=10000, idle_timeout_ms=10000) + f"""
# The tests make the model fail on purpose, one request after another: a
# breaker opening after five would shed the tests that follow.
[health]
failures_to_open = 10000

[[models]]
name = "{REAL_TRITON_MODEL}"
context_window = 4096
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = 16

[[models]]
name = "{REAL_TRITON_MISSING_MODEL}"
context_window = 4096
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
cached_input_usd_per_mtok = {CACHED_INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}
default_max_tokens = 16

[[backends]]
name = "{REAL_TRITON_BACKEND}"
engine = "triton"
url = "{url}"
model = "{REAL_TRITON_MODEL}"
served_model = "ensemble"
metrics_url = "{metrics_url}"

[[backends]]
name = "triton-missing-0"
engine = "triton"
url = "{url}"
model = "{REAL_TRITON_MISSING_MODEL}"
served_model = "no-such-model"
"""


@pytest.fixture(scope="session")
def real_triton(tmp_path_factory: pytest.TempPathFactory):
    url = os.environ.get("REAL_TRITON_URL", "").rstrip("/")
    started_port: str | None = None
    info: dict[str, str] = {}
    if url:
        info = _real_triton_info(url.rsplit(":", 1)[-1])
    elif os.environ.get("CI"):
        pytest.fail("REAL_TRITON_URL is not set: under CI the real-Triton suite must run (scripts/test starts it)")
    else:
        subprocess.run(
            ["bash", str(REAL_TRITON_DIR / "setup.sh")], check=True, stdout=subprocess.DEVNULL, timeout=1800
        )
        started_port = subprocess.run(
            [str(REAL_ENGINE_DIR / "free-port")], check=True, stdout=subprocess.PIPE, text=True
        ).stdout.strip()
        try:
            out = subprocess.run(
                ["bash", str(REAL_TRITON_DIR / "start.sh"), started_port],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
                timeout=REAL_TRITON_START_TIMEOUT_S,
            ).stdout
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            subprocess.run(["bash", str(REAL_TRITON_DIR / "stop.sh"), started_port], check=False)
            pytest.fail(f"could not start the real Triton on port {started_port}: {e}")
        info = _key_values(out)
        url = info["REAL_TRITON_URL"]

    metrics_url = os.environ.get("REAL_TRITON_METRICS_URL") or info.get("REAL_TRITON_METRICS_URL", "")
    if not metrics_url:
        pytest.fail("no metrics URL for the real Triton: set REAL_TRITON_METRICS_URL")
    events = os.environ.get("REAL_TRITON_EVENTS_DIR") or info.get("REAL_TRITON_EVENTS_DIR")
    try:
        workdir = tmp_path_factory.mktemp("real-triton-gateway")
        config_path = workdir / "gateway.toml"
        config_path.write_text(_real_triton_config(url, metrics_url), encoding="utf-8")
        run = _run_gateway(["--config", str(config_path)], workdir, config_path)
        gw = next(run)
        yield RealTriton(
            url=url,
            metrics_url=metrics_url,
            events_dir=Path(events) if events else None,
            gateway=gw,
            started_here=started_port is not None,
        )
        next(run, None)  # the gateway's teardown (and its checks)
    finally:
        if started_port is not None:
            subprocess.run(["bash", str(REAL_TRITON_DIR / "stop.sh"), started_port], check=False)
