"""The edge limits seen from the official `openai` SDK: 2,000 sockets that
send their request head one byte at a time (slowloris) while an SDK request
still gets its answer in under a second, and every slow socket is closed by
the gateway within its header timeout (a margin added for a loaded machine).

The gateway here is the conftest's simulated-engine config with a 2 s
`header_read_timeout_ms`; the Rust test `examples/tests/edge_limits.rs`
proves the same with descriptor and RSS bounds.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

import openai
import pytest
from conftest import CONFIG, MODEL, TENANT_KEY, _run_gateway

SLOW_SOCKETS = 2000
HEADER_TIMEOUT_MS = 2000
BYTE_EVERY_S = 0.3
# The gateway closes a slow socket at its header timeout; the margin covers
# a loaded 2-core machine and this test's own 300 ms write cadence.
CLOSED_WITHIN_S = HEADER_TIMEOUT_MS / 1000 + 3.0


@pytest.fixture(scope="module")
def edge_gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("edge-gateway")
    config = CONFIG.replace(
        "[server]\n",
        f"[server]\nheader_read_timeout_ms = {HEADER_TIMEOUT_MS}\n",
        1,
    )
    path = workdir / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    yield from _run_gateway(["--config", str(path)], workdir, path)


def _trickle(head: bytes, sockets: list[socket.socket], closed_at: dict[int, float], stop: threading.Event) -> None:
    """Writes one more byte of `head` to every open socket every
    BYTE_EVERY_S and records when the gateway closed each (EOF or reset)."""
    sel = selectors.DefaultSelector()
    for i, s in enumerate(sockets):
        sel.register(s, selectors.EVENT_READ, i)
    sent = 0
    next_write = time.monotonic()
    while not stop.is_set() and len(closed_at) < len(sockets):
        now = time.monotonic()
        if now >= next_write and sent < len(head):
            for i, s in enumerate(sockets):
                if i not in closed_at:
                    try:
                        s.send(head[sent : sent + 1])
                    except OSError:
                        closed_at.setdefault(i, time.monotonic())
            sent += 1
            next_write = now + BYTE_EVERY_S
        for key, _ in sel.select(timeout=0.05):
            i = key.data
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_at.setdefault(i, time.monotonic())
                sel.unregister(key.fileobj)
    sel.close()


def test_slow_header_sockets_are_closed_while_an_sdk_request_succeeds(edge_gateway):
    host, port = edge_gateway.addr.rsplit(":", 1)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {TENANT_KEY}\r\n".encode()
    sockets = []
    try:
        for _ in range(SLOW_SOCKETS):
            s = socket.create_connection((host, int(port)))
            s.setblocking(False)
            sockets.append(s)
        opened = time.monotonic()
        closed_at: dict[int, float] = {}
        stop = threading.Event()
        trickler = threading.Thread(target=_trickle, args=(head, sockets, closed_at, stop), daemon=True)
        trickler.start()
        time.sleep(0.5)

        client = openai.OpenAI(base_url=edge_gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=10)
        started = time.monotonic()
        done = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Still there?"}], max_tokens=4
        )
        took = time.monotonic() - started
        assert done.choices[0].finish_reason == "length"
        assert done.usage.completion_tokens == 4
        assert took < 1.0, f"the SDK request took {took:.3f} s beside {SLOW_SOCKETS} slow sockets"

        trickler.join(timeout=CLOSED_WITHIN_S + 2)
        stop.set()
        assert len(closed_at) == SLOW_SOCKETS, f"{SLOW_SOCKETS - len(closed_at)} slow sockets still open"
        latest = max(closed_at.values()) - opened
        assert latest < CLOSED_WITHIN_S, f"the last slow socket closed {latest:.2f} s after opening"
    finally:
        for s in sockets:
            s.close()
