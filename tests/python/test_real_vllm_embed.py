"""Embeddings from a REAL vLLM through the `gateway` binary, each compared
with the same request sent to vLLM directly.

The engine (the `real_vllm_embed` fixture in conftest.py) is the CPU vLLM
0.32 serving the random-weight "tiny-llama" as an embedding model:
`--runner pooling --convert embed` (last-token pooling, normalized; 64
numbers per vector; docs/real-engine.md, "Embeddings"). The gateway counts
prompts with the TinyLlama tokenizer fixture, BOS added, so its estimate is
exact and each request is charged exactly vLLM's `usage.prompt_tokens`.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from conftest import INPUT_USD_PER_MTOK, REAL_MODEL, TENANT_KEY, RealVllm
from test_real_vllm import admin_usage, estimate_hist, gateway_metrics, http_post_json, metric

# 1 USD per million tokens is 1e6 picodollars per token.
INPUT_PICOS = round(INPUT_USD_PER_MTOK * 1_000_000)
DIMS = 64  # the model's hidden size
TEXTS = ["Hello world", "The sea is blue and deep.", "日本語 é 🙂", ""]


@pytest.fixture(scope="module")
def client(real_vllm_embed: RealVllm) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=real_vllm_embed.gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=120.0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def direct(real_vllm_embed: RealVllm) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{real_vllm_embed.url}/v1", api_key="unused", max_retries=0, timeout=120.0) as c:
        yield c


def same_vectors(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.index == y.index
        if isinstance(x.embedding, str):
            # base64 asked for explicitly: the SDK hands the text over as is.
            assert x.embedding == y.embedding
            assert len(base64.b64decode(x.embedding)) == 4 * DIMS
            continue
        assert len(x.embedding) == DIMS
        # The gateway passes the engine's numbers (or bytes) through.
        assert max(abs(p - q) for p, q in zip(x.embedding, y.embedding)) <= 1e-6


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_embeddings_equal_vllms_and_are_charged_its_prompt_tokens(real_vllm_embed, client, direct, encoding):
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    before = admin_usage(real_vllm_embed)
    metrics_before = gateway_metrics(real_vllm_embed)
    hist_before = estimate_hist(metrics_before)
    got = client.embeddings.create(model=REAL_MODEL, input=TEXTS, **kwargs)
    want = direct.embeddings.create(model=REAL_MODEL, input=TEXTS, **kwargs)
    assert got.model == REAL_MODEL
    same_vectors(got.data, want.data)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.total_tokens == want.usage.total_tokens == want.usage.prompt_tokens
    after = admin_usage(real_vllm_embed)
    prompt = want.usage.prompt_tokens
    assert after["prompt_tokens"] - before["prompt_tokens"] == prompt
    assert after["completion_tokens"] == before["completion_tokens"]
    assert after["spent_picousd"] - before["spent_picousd"] == prompt * INPUT_PICOS
    assert after["requests"] - before["requests"] == 1
    assert after["reserved_picousd"] == 0
    # The tokenizer fixture counted exactly what vLLM counted.
    metrics_after = gateway_metrics(real_vllm_embed)
    hist = estimate_hist(metrics_after)
    assert hist["count"] - hist_before["count"] == 1
    assert hist["zero"] - hist_before["zero"] == 1
    assert hist["sum"] == hist_before["sum"]
    inputs = "gateway_embedding_inputs_total"
    assert metric(metrics_after, inputs, model=REAL_MODEL) - metric(metrics_before, inputs, model=REAL_MODEL) == len(
        TEXTS
    )


def test_token_ids_and_raw_base64_bytes(real_vllm_embed, client, direct):
    ids = [[1, 15043, 3186], [1, 450, 7205, 338]]
    got = client.embeddings.create(model=REAL_MODEL, input=ids, encoding_format="float")
    want = direct.embeddings.create(model=REAL_MODEL, input=ids, encoding_format="float")
    same_vectors(got.data, want.data)
    assert got.usage.prompt_tokens == want.usage.prompt_tokens == 7
    # "Hello world" is BOS + 2 tokens: the same vector as its ids.
    text = client.embeddings.create(model=REAL_MODEL, input="Hello world", encoding_format="float")
    assert text.usage.prompt_tokens == 3
    assert max(abs(p - q) for p, q in zip(text.data[0].embedding, got.data[0].embedding)) <= 1e-6
    # Raw: the base64 text is vLLM's, byte for byte.
    body = {"model": REAL_MODEL, "input": "Hello world", "encoding_format": "base64"}
    gw = http_post_json_auth(f"{real_vllm_embed.gateway.base_url}/embeddings", body)
    engine = http_post_json(f"{real_vllm_embed.url}/v1/embeddings", body)
    assert gw["data"][0]["embedding"] == engine["data"][0]["embedding"]
    assert gw["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    raw = base64.b64decode(gw["data"][0]["embedding"])
    assert len(raw) == 4 * DIMS
    values = struct.unpack(f"<{DIMS}f", raw)
    assert max(abs(p - q) for p, q in zip(values, text.data[0].embedding)) <= 1e-6


def http_post_json_auth(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TENANT_KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_refusals_are_the_gateways_or_vllms(real_vllm_embed, client):
    before = admin_usage(real_vllm_embed)
    # vLLM's own: the model has no Matryoshka dimensions. vLLM's text stays
    # in the gateway's logs; the client gets the kind's fixed message.
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=REAL_MODEL, input="Hello", dimensions=8, encoding_format="float")
    assert refused.value.body["code"] == "invalid_request"
    assert refused.value.body["message"] == "the engine rejected the request as invalid (engine status 400)"
    # The gateway's: an input past the 2048-token window never reaches vLLM.
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=REAL_MODEL, input=[[5] * 2049], encoding_format="float")
    assert refused.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=REAL_MODEL, input=[], encoding_format="float")
    assert refused.value.body["param"] == "input"
    after = admin_usage(real_vllm_embed)
    assert after["spent_picousd"] == before["spent_picousd"]
    assert after["reserved_picousd"] == 0
