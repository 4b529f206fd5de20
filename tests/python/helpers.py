"""Plain HTTP and Prometheus-text helpers shared by the real-engine tests."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Callable

# Loopback only: never through a proxy from the environment.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: dict[str, str] | None = None) -> str:
    """The body of a GET that must answer 200."""
    with NO_PROXY.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
        assert r.status == 200
        return r.read().decode("utf-8")


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name` in Prometheus text whose labels include `labels`."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            out.append((have, float(m.group(4))))
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when there is none)."""
    return sum(v for _, v in samples(text, name, **labels))


def post_raw(addr: str, path: str, key: str, body: dict, timeout: float = 30) -> socket.socket:
    """A socket that has sent a JSON POST of `body` to the gateway at `addr`
    with the tenant key `key`; its answer is for the caller to read."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    payload = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n".encode()
        + b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_until(sock: socket.socket, enough: Callable[[bytes], bool]) -> bytes:
    """Reads until `enough(bytes so far)`; the connection may not end first."""
    raw = b""
    while not enough(raw):
        data = sock.recv(65536)
        assert data, f"connection closed early: {raw!r}"
        raw += data
    return raw


def reset(sock: socket.socket) -> bytes:
    """Takes what has already arrived, then closes with a reset (SO_LINGER 0)
    at once: the bytes a client had when it went away."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.setblocking(False)
    raw = b""
    try:
        while data := sock.recv(65536):
            raw += data
    except BlockingIOError:
        pass
    finally:
        sock.close()
    return raw
