"""`client.embeddings.create` through the `gateway` binary, with the official
`openai` SDK, to every engine kind's simulator (`engine-sims`, one backend
per kind as in test_all_engines.py).

The vLLM simulator serves `/v1/embeddings` like vLLM 0.32 with a pooling
model: a deterministic unit vector of 8 numbers per input, derived from the
input's token ids (a text: BOS then one id per word), usage counted like a
completion prompt (1 + words per text). The OpenAI-compatible kinds (vllm,
openai, nim, dynamo) embed through it; trtllm-serve and Triton have no
embeddings (refused by the gateway with a 400), and neither does the SGLang
simulator (SGLang itself serves them on its OpenAI route with
`--is-embedding`; the adapter forwards there, see the Rust adapter tests).

Checked exactly: the vectors (within float32 rounding), usage, the ledger
(admin view, in picodollars), the metrics, and every refusal's status, code
and field.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from conftest import ADMIN_KEY, INPUT_USD_PER_MTOK, TENANT_ID, TENANT_KEY, Gateway
from test_all_engines import (  # noqa: F401  (module-scoped fixtures, a gateway of its own)
    config_path,
    gateway,
    model_of,
    nim_key_env,
    sims,
)

EMBEDDING_KINDS = ["vllm", "openai", "nim", "dynamo"]
NO_EMBEDDING_KINDS = ["trtllm", "triton", "sglang"]
DIMS = 8
TEXTS = ["Hello world", "the sea is blue"]
# 1 + words per text.
TEXTS_TOKENS = 3 + 5
# 1 USD per million tokens is 1e6 picodollars per token.
INPUT_PICOS = round(INPUT_USD_PER_MTOK * 1_000_000)


def text_ids(text: str) -> list[int]:
    """The simulator's token ids of a text (gateway_sims::vllm::text_ids)."""
    ids = [1]
    for word in text.split():
        h = 0x811C9DC5
        for b in word.encode():
            h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
        ids.append(2 + h % 31_998)
    return ids


def embedding_of(ids: list[int], dims: int = DIMS) -> list[float]:
    """The simulator's vector (gateway_sims::vllm::embedding_of), as f32s."""
    v = [0.0] * dims
    for pos, token in enumerate(ids):
        for j in range(dims):
            v[j] += math.sin(token * 0.61803398875 * (j + 1) + pos * 0.3)
    norm = math.sqrt(sum(x * x for x in v))
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in v]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-6 for x, y in zip(a, b))


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:  # noqa: F811
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=10.0
    ) as c:
        yield c


def admin_usage(gw: Gateway) -> dict:
    request = urllib.request.Request(
        f"http://{gw.addr}/admin/tenants/{TENANT_ID}/usage",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def post(gw: Gateway, body: bytes, key: str | None = TENANT_KEY) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        f"http://{gw.addr}/v1/embeddings", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("kind", EMBEDDING_KINDS)
def test_embeddings_through_each_engine(client: openai.OpenAI, gateway: Gateway, kind: str):  # noqa: F811
    model = model_of(kind)
    before = admin_usage(gateway)
    # The SDK asks for base64 by default and decodes it.
    done = client.embeddings.create(model=model, input=TEXTS)
    assert done.object == "list"
    assert done.model == model
    assert [d.index for d in done.data] == [0, 1]
    assert all(d.object == "embedding" for d in done.data)
    for d, text in zip(done.data, TEXTS):
        assert close(d.embedding, embedding_of(text_ids(text))), (d.embedding, text)
    assert done.usage.prompt_tokens == TEXTS_TOKENS
    assert done.usage.total_tokens == TEXTS_TOKENS
    after = admin_usage(gateway)
    # Charged exactly the engine's prompt tokens, once; nothing left held.
    assert after["prompt_tokens"] - before["prompt_tokens"] == TEXTS_TOKENS
    assert after["completion_tokens"] == before["completion_tokens"]
    assert after["spent_picousd"] - before["spent_picousd"] == TEXTS_TOKENS * INPUT_PICOS
    assert after["requests"] - before["requests"] == 1
    assert after["reserved_picousd"] == 0


def test_floats_token_ids_and_one_string(client: openai.OpenAI):
    model = model_of("vllm")
    done = client.embeddings.create(model=model, input=[[1, 15043, 3186], [7]], encoding_format="float")
    assert close(done.data[0].embedding, embedding_of([1, 15043, 3186]))
    assert close(done.data[1].embedding, embedding_of([7]))
    assert done.usage.prompt_tokens == 4
    done = client.embeddings.create(model=model, input="Once upon a time", encoding_format="float")
    assert len(done.data) == 1
    assert close(done.data[0].embedding, embedding_of(text_ids("Once upon a time")))
    assert done.usage.prompt_tokens == 5
    done = client.embeddings.create(model=model, input=[5, 6, 7], encoding_format="float", user="u-1")
    assert done.usage.prompt_tokens == 3


def test_raw_base64_is_little_endian_f32(gateway: Gateway):  # noqa: F811
    status, body = post(
        gateway,
        json.dumps({"model": model_of("vllm"), "input": "Hello world", "encoding_format": "base64"}).encode(),
    )
    assert status == 200, body
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    raw = base64.b64decode(body["data"][0]["embedding"])
    values = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    assert values == embedding_of(text_ids("Hello world"))


@pytest.mark.parametrize("kind", NO_EMBEDDING_KINDS)
def test_engines_without_embeddings_answer_400(client: openai.OpenAI, kind: str):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=model_of(kind), input=TEXTS)
    assert refused.value.status_code == 400
    assert refused.value.body["code"] == "invalid_request"
    # The fixed message of the kind; engines that answered add their status.
    assert refused.value.body["message"].startswith("no backend of this model can serve it: the engine does not serve this endpoint")


def test_refusals_have_the_contracts_codes(gateway: Gateway):  # noqa: F811
    model = model_of("vllm")
    before = admin_usage(gateway)
    cases = [
        # (body, key, status, code, param)
        ({"model": model, "input": "x"}, None, 401, "invalid_api_key", None),
        ({"model": model, "input": "x"}, "sk-wrong", 401, "invalid_api_key", None),
        ({"model": "nope", "input": "x"}, TENANT_KEY, 404, "model_not_found", None),
        ({"model": model}, TENANT_KEY, 400, "invalid_request", "input"),
        ({"model": model, "input": []}, TENANT_KEY, 400, "invalid_request", "input"),
        ({"model": model, "input": ["a", [1]]}, TENANT_KEY, 400, "invalid_request", "input[1]"),
        ({"model": model, "input": "x", "encoding_format": "bytes"}, TENANT_KEY, 400, "invalid_request",
         "encoding_format"),
        ({"model": model, "input": "x", "dimensions": 0}, TENANT_KEY, 400, "invalid_request", "dimensions"),
        ({"input": "x"}, TENANT_KEY, 400, "invalid_request", "model"),
        # Over the 4096-token window: refused before the engine.
        ({"model": model, "input": [1] * 4097}, TENANT_KEY, 400, "context_length_exceeded", None),
        # The engine's own refusal: the model has no Matryoshka dimensions.
        ({"model": model, "input": "x", "dimensions": 4}, TENANT_KEY, 400, "invalid_request", None),
    ]
    for body, key, status, code, param in cases:
        got, answer = post(gateway, json.dumps(body).encode(), key)
        assert got == status, (body, answer)
        assert answer["error"]["code"] == code, (body, answer)
        assert answer["error"]["param"] == param, (body, answer)
    got, answer = post(gateway, b"{not json")
    assert (got, answer["error"]["code"]) == (400, "invalid_request")
    # The body limit (1 MiB by default), as for chat.
    big = json.dumps({"model": model, "input": "x" * (1 << 20)}).encode()
    got, answer = post(gateway, big)
    assert (got, answer["error"]["code"]) == (413, "request_too_large")
    # Nothing above was charged; the engine's refusal settled at zero.
    after = admin_usage(gateway)
    assert after["spent_picousd"] == before["spent_picousd"]
    assert after["prompt_tokens"] == before["prompt_tokens"]
    assert after["reserved_picousd"] == 0


def test_zz_metrics_count_embeddings(gateway: Gateway):  # noqa: F811
    with urllib.request.urlopen(f"http://{gateway.addr}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    # vllm: 1 (per engine) + 3 (floats, ids, one string) + 1 (raw base64).
    assert lines[f'gateway_requests_total{{tenant="{TENANT_ID}",model="sim-vllm",outcome="ok"}}'] == 5
    assert lines['gateway_embedding_inputs_total{model="sim-vllm"}'] == 2 + 2 + 1 + 1 + 1
    assert lines['gateway_embedding_inputs_total{model="sim-openai"}'] == 2
    assert lines[f'gateway_tokens_total{{tenant="{TENANT_ID}",model="sim-nim",kind="prompt"}}'] == TEXTS_TOKENS
    assert lines['gateway_request_duration_seconds_count{model="sim-dynamo"}'] == 1
    assert lines[f'gateway_requests_total{{tenant="{TENANT_ID}",model="sim-trtllm",outcome="invalid_request"}}'] == 1
    assert lines['gateway_backend_failures_total{backend="triton-0",kind="unsupported"}'] == 1
