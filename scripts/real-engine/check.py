#!/usr/bin/env python3
"""Smoke test of a running real engine (the one start.sh PORT started).

    bash scripts/real-engine/check.sh PORT      (runs this with the engine's python)

Standard library plus `tokenizers` and `jinja2`, both in the engine venv. Checks the
HTTP surface the gateway relies on, and that the token-counting rules written in
docs/real-engine.md give exactly vLLM's counts when applied to the project's own
fixture files:

  * /health, /v1/models;
  * chat, non-streaming and streaming (with include_usage), max_tokens 8 + ignore_eos;
  * /v1/completions usage;
  * /tokenize for a prompt (BOS added) and for chat messages (template, no BOS);
  * local count (fixture tokenizer + template rendered like transformers) == vLLM's;
  * /metrics has the running / waiting / KV-usage gauges;
  * closing a stream mid-way aborts the request (log line, running gauge back to 0).

Prints one line per check and a final summary line; exit status 1 if any failed.
"""
import argparse
import http.client
import json
import os
import re
import sys
import time
from pathlib import Path

MODEL = "tiny-llama"
REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "fixtures" / "tokenizers"

SYSTEM_AND_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there"},
]

outcomes = []


def verdict(name, ok, detail):
    outcomes.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)


class Engine:
    def __init__(self, port):
        self.port = port

    def connect(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def call(self, method, path, body=None):
        conn = self.connect()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        return resp.status, raw

    def post(self, path, body):
        status, raw = self.call("POST", path, body)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"unparsed": raw.decode("utf-8", "replace")}

    def gauge(self, name):
        _, raw = self.call("GET", "/metrics")
        for line in raw.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def open_stream(self, body):
        conn = self.connect()
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        return conn, conn.getresponse()


def sse_data(resp):
    """Payloads of the `data:` lines of an SSE body, as they arrive."""
    pending = b""
    while True:
        block = resp.read1(65536)
        if not block:
            return
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip().decode()


def local_counter():
    """Token counts by the documented rules, from the repository's fixture files."""
    import jinja2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURES / "tinyllama.json"))
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((FIXTURES / "tinyllama.chat_template.jinja").read_text(encoding="utf-8"))

    def prompt_ids(text):
        return tok.encode(text, add_special_tokens=True).ids

    def chat_ids(messages):
        text = template.render(messages=messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
        return tok.encode(text, add_special_tokens=False).ids

    return prompt_ids, chat_ids


def run(port, log_path):
    engine = Engine(port)

    status, _ = engine.call("GET", "/health")
    verdict("health", status == 200, f"GET /health -> {status}")

    status, models = engine.call("GET", "/v1/models")
    ids = [m.get("id") for m in json.loads(models).get("data", [])] if status == 200 else []
    verdict("models", ids == [MODEL], f"GET /v1/models -> {status} {ids}")

    status, tk = engine.post("/tokenize", {"prompt": "Hello world"})
    verdict("tokenize prompt", status == 200 and tk.get("count") == 3 and tk.get("tokens", [None])[0] == 1,
            f"{status} count {tk.get('count')} tokens {tk.get('tokens')} (want 3, starting with BOS 1)")
    status, tm = engine.post("/tokenize", {"messages": SYSTEM_AND_USER})
    chat_count = tm.get("count")
    verdict("tokenize messages", status == 200 and chat_count == 30 and tm["tokens"][:6] == [529, 29989, 5205, 29989, 29958, 13],
            f"{status} count {chat_count} first {tm.get('tokens', [])[:6]} (want 30, no BOS)")

    prompt_ids, chat_ids = local_counter()
    cases = [
        ("prompt", "Hello world", prompt_ids("Hello world")),
        ("prompt", "  leading spaces, ünïcödé and 数字 42\nnew line", None),
        ("messages", SYSTEM_AND_USER, chat_ids(SYSTEM_AND_USER)),
        ("messages", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " there  "},
                      {"role": "user", "content": "  and\n\nmore  "}], None),
    ]
    mismatches = []
    for kind, value, _ in cases:
        mine = prompt_ids(value) if kind == "prompt" else chat_ids(value)
        _, theirs = engine.post("/tokenize", {kind: value})
        if mine != theirs.get("tokens"):
            mismatches.append(f"{kind} {value!r}: local {mine} vs vLLM {theirs.get('tokens')}")
    verdict("counting rules", not mismatches,
            f"{len(cases)} inputs, fixture tokenizer + template == /tokenize" if not mismatches else "; ".join(mismatches))

    body = {"model": MODEL, "messages": SYSTEM_AND_USER, "max_tokens": 8, "ignore_eos": True}
    status, chat = engine.post("/v1/chat/completions", body)
    usage = chat.get("usage") or {}
    choice = (chat.get("choices") or [{}])[0]
    verdict("chat", status == 200 and usage.get("completion_tokens") == 8 and usage.get("prompt_tokens") == chat_count
            and choice.get("finish_reason") == "length" and isinstance(choice.get("message", {}).get("content"), str),
            f"{status} usage {usage} finish {choice.get('finish_reason')}")

    conn, resp = engine.open_stream(dict(body, stream=True, stream_options={"include_usage": True}))
    events = list(sse_data(resp)) if resp.status == 200 else []
    conn.close()
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    finish = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    last_usage = chunks[-1].get("usage") if chunks else None
    verdict("chat stream", resp.status == 200 and events[-1:] == ["[DONE]"] and finish == ["length"]
            and chunks[-1]["choices"] == [] and last_usage and last_usage.get("completion_tokens") == 8
            and last_usage.get("prompt_tokens") == chat_count,
            f"{resp.status} {len(chunks)} chunks ({len(text_chunks)} with text), finish {finish}, usage {last_usage}, ends with [DONE]: {events[-1:] == ['[DONE]']}")

    status, comp = engine.post("/v1/completions", {"model": MODEL, "prompt": "Hello world", "max_tokens": 8, "ignore_eos": True})
    verdict("completions", status == 200 and comp.get("usage", {}).get("prompt_tokens") == 3
            and comp.get("usage", {}).get("completion_tokens") == 8, f"{status} usage {comp.get('usage')}")

    status, raw = engine.call("GET", "/metrics")
    text = raw.decode()
    wanted = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"]
    missing = [m for m in wanted if not re.search(rf"^{re.escape(m)}[{{ ]", text, re.M)]
    verdict("metrics", status == 200 and not missing, f"{status}, missing {missing}" if missing else f"{status}, has {', '.join(wanted)}")

    # Client disconnect mid-stream.
    log_size = os.path.getsize(log_path) if log_path and os.path.exists(log_path) else 0
    conn, resp = engine.open_stream({"model": MODEL, "messages": [{"role": "user", "content": "Go on."}],
                                     "max_tokens": 1500, "ignore_eos": True, "stream": True})
    request_id, seen = None, 0
    for data in sse_data(resp):
        request_id = request_id or json.loads(data).get("id")
        seen += 1
        if seen == 20:
            break
    running_before = engine.gauge("vllm:num_requests_running")
    conn.sock.close()  # hard close, as a client that goes away
    conn.close()
    closed = time.monotonic()
    back_to_zero = logged = None
    while time.monotonic() - closed < 10 and (back_to_zero is None or (log_path and logged is None)):
        if back_to_zero is None and engine.gauge("vllm:num_requests_running") == 0:
            back_to_zero = time.monotonic() - closed
        if log_path and logged is None:
            with open(log_path, "rb") as fh:
                fh.seek(log_size)
                if f"Aborted request(s) {request_id}-".encode() in fh.read():
                    logged = time.monotonic() - closed
        time.sleep(0.01)
    fmt = lambda s: "never" if s is None else f"{s:.2f} s"
    verdict("abort on disconnect", running_before == 1 and back_to_zero is not None and (not log_path or logged is not None),
            f"{request_id}: running {running_before} before close; back to 0 after {fmt(back_to_zero)}; "
            f"log 'Aborted request(s)' after {fmt(logged) if log_path else 'not checked (no log)'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("--log", help="the server log (for the abort line); default: none, that part is skipped")
    args = ap.parse_args()
    try:
        run(args.port, args.log)
    except Exception as exc:  # an unreachable server etc.: count it, do not hide it
        verdict("unexpected error", False, repr(exc))
    failed = outcomes.count(False)
    summary = f"{len(outcomes)} checks, all passed" if not failed else f"{failed} of {len(outcomes)} checks FAILED"
    print(f"real-engine check: {summary}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
