"""Speculative decoding on a REAL vLLM, through the `gateway` binary.

The engine (the `real_vllm_spec` fixture in conftest.py) is the CPU vLLM
serving "tiny-llama" with ngram speculative decoding (3 draft tokens) and
`--per-request-spec-decode-metrics summary`, so the final usage chunk of each
request carries `metrics.speculative_decoding` with the request's draft and
accepted counts (docs/real-engine.md). The gateway's vLLM adapter reads them
into its usage; they must come out, exactly, in:

- the client's usage (`completion_tokens_details.accepted_prediction_tokens`
  and `rejected_prediction_tokens`, SERVER-CONTRACT.md),
- the tenant's ledger (`/admin/tenants/{id}/usage`: `drafted_tokens`,
  `accepted_tokens`),
- the gateway's metrics (`gateway_tokens_total{kind="drafted"|"accepted"|"rejected"}`),

and equal what vLLM itself counted in its `/metrics`
(`vllm:spec_decode_num_draft_tokens_total`,
`vllm:spec_decode_num_accepted_tokens_total`) over the same request: this
engine serves nothing else while a test runs.

Accepted drafts reach the client merged into fewer chunks than tokens, so
counting one token per chunk undercharges; the tests pin that the tenant is
charged every completion token vLLM reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest
from conftest import REAL_MODEL, TENANT_KEY, RealVllm
from test_real_vllm import admin_usage, gateway_metrics, metric, vllm_metrics

# Greedy, exact length: ngram drafts from a repetitive prompt are accepted often.
GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
MAX_TOKENS = 120
REPETITIVE = [
    {
        "role": "user",
        "content": "one two three four one two three four one two three four "
        "one two three four one two three four one two three four",
    }
]


@pytest.fixture(scope="module")
def spec_client(real_vllm_spec: RealVllm) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=real_vllm_spec.gateway.base_url, api_key=TENANT_KEY, max_retries=0, timeout=180.0
    ) as c:
        yield c


@pytest.fixture(scope="module")
def spec_direct(real_vllm_spec: RealVllm) -> Iterator[openai.OpenAI]:
    """The SDK straight at vLLM, for its own per-request report."""
    with openai.OpenAI(
        base_url=f"{real_vllm_spec.url}/v1", api_key="unused", max_retries=0, timeout=180.0
    ) as c:
        yield c


def spec_counters(rv: RealVllm) -> tuple[float, float]:
    """vLLM's (draft tokens, accepted tokens) totals for the model."""
    text = vllm_metrics(rv)
    return (
        metric(text, "vllm:spec_decode_num_draft_tokens_total", model_name=REAL_MODEL),
        metric(text, "vllm:spec_decode_num_accepted_tokens_total", model_name=REAL_MODEL),
    )


def gateway_spec(rv: RealVllm) -> dict[str, float]:
    """The gateway's token counters for the model, by kind, and the tenant's
    ledger figures."""
    text = gateway_metrics(rv)
    ledger = admin_usage(rv)
    out = {
        kind: metric(text, "gateway_tokens_total", model=REAL_MODEL, kind=kind)
        for kind in ("drafted", "accepted", "rejected", "completion")
    }
    out["ledger_drafted"] = ledger["drafted_tokens"]
    out["ledger_accepted"] = ledger["accepted_tokens"]
    out["ledger_completion"] = ledger["completion_tokens"]
    return out


def settled_counters(rv: RealVllm, before: tuple[float, float]) -> tuple[float, float]:
    """vLLM's counters once they moved past `before` and stopped moving
    (the engine publishes them per step, a moment after the response)."""
    deadline = time.monotonic() + 10.0
    last = spec_counters(rv)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = spec_counters(rv)
        if now == last and now[0] > before[0]:
            return now
        last = now
    raise AssertionError(f"vLLM's spec-decode counters did not settle: {before} -> {last}")


def settled_gateway(rv: RealVllm, before: dict[str, float]) -> dict[str, float]:
    """The gateway's figures once the request was settled (the ledger and
    metrics are written when the stream's pump ends, just after the last
    byte)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        now = gateway_spec(rv)
        if now["ledger_completion"] > before["ledger_completion"]:
            return now
        time.sleep(0.05)
    raise AssertionError("the gateway did not settle the request")


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def test_warm_up(real_vllm_spec: RealVllm, spec_direct: openai.OpenAI) -> None:
    """The first speculative request after start takes seconds (vLLM's
    warm-up); done straight at vLLM so the measured tests below are plain."""
    done = spec_direct.chat.completions.create(model=REAL_MODEL, messages=REPETITIVE, max_tokens=8, **GREEDY)
    assert done.usage.completion_tokens == 8


def test_non_streamed_draft_counts_match_vllm_everywhere(
    real_vllm_spec: RealVllm, spec_client: openai.OpenAI, spec_direct: openai.OpenAI
) -> None:
    engine_before = spec_counters(real_vllm_spec)
    gateway_before = gateway_spec(real_vllm_spec)

    done = spec_client.chat.completions.create(
        model=REAL_MODEL, messages=REPETITIVE, max_tokens=MAX_TOKENS, **GREEDY
    )
    engine_after = settled_counters(real_vllm_spec, engine_before)
    drafted = engine_after[0] - engine_before[0]
    accepted = engine_after[1] - engine_before[1]
    gw = delta(settled_gateway(real_vllm_spec, gateway_before), gateway_before)

    usage = done.usage
    assert usage.completion_tokens == MAX_TOKENS
    details = usage.completion_tokens_details
    assert details is not None, "the gateway reported no speculative counts"
    print(
        f"\nnon-streamed, {MAX_TOKENS} tokens: vLLM drafted {drafted:.0f}, accepted {accepted:.0f}; "
        f"client accepted {details.accepted_prediction_tokens}, rejected {details.rejected_prediction_tokens}; "
        f"gateway metrics {gw}"
    )
    assert drafted > 0 and 0 < accepted <= drafted
    assert details.accepted_prediction_tokens == accepted
    assert details.rejected_prediction_tokens == drafted - accepted
    assert gw["drafted"] == drafted
    assert gw["accepted"] == accepted
    assert gw["rejected"] == drafted - accepted
    # Accepted drafts arrive merged into fewer chunks: the charge must
    # still be every token vLLM produced, not one per chunk.
    assert gw["completion"] == MAX_TOKENS
    assert gw["ledger_completion"] == MAX_TOKENS
    assert gw["ledger_drafted"] == drafted
    assert gw["ledger_accepted"] == accepted

    # vLLM's own per-request report for the same greedy request agrees.
    reference = spec_direct.chat.completions.create(
        model=REAL_MODEL, messages=REPETITIVE, max_tokens=MAX_TOKENS, **GREEDY
    )
    spec = (reference.model_extra or {}).get("metrics", {}).get("speculative_decoding")
    assert spec is not None, f"vLLM sent no per-request metrics: {reference.model_extra}"
    assert (spec["num_draft_tokens"], spec["num_accepted_draft_tokens"]) == (drafted, accepted)
    assert reference.choices[0].message.content == done.choices[0].message.content


def test_streamed_draft_counts_reach_the_usage_chunk(real_vllm_spec: RealVllm, spec_client: openai.OpenAI) -> None:
    engine_before = spec_counters(real_vllm_spec)
    gateway_before = gateway_spec(real_vllm_spec)

    chunks = list(
        spec_client.chat.completions.create(
            model=REAL_MODEL,
            messages=REPETITIVE,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    engine_after = settled_counters(real_vllm_spec, engine_before)
    drafted = engine_after[0] - engine_before[0]
    accepted = engine_after[1] - engine_before[1]
    gw = delta(settled_gateway(real_vllm_spec, gateway_before), gateway_before)

    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].choices == []
    details = usage[0].completion_tokens_details
    assert details is not None
    print(
        f"\nstreamed, {MAX_TOKENS} tokens: vLLM drafted {drafted:.0f}, accepted {accepted:.0f}; "
        f"usage chunk accepted {details.accepted_prediction_tokens}, rejected {details.rejected_prediction_tokens}"
    )
    assert usage[0].completion_tokens == MAX_TOKENS
    assert drafted > 0 and 0 < accepted <= drafted
    assert (details.accepted_prediction_tokens, details.rejected_prediction_tokens) == (
        accepted,
        drafted - accepted,
    )
    assert (gw["drafted"], gw["accepted"], gw["ledger_drafted"], gw["ledger_accepted"]) == (
        drafted,
        accepted,
        drafted,
        accepted,
    )
    assert (gw["completion"], gw["ledger_completion"]) == (MAX_TOKENS, MAX_TOKENS)
