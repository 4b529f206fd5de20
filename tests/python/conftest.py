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
