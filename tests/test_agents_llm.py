"""litellm access (agents.llm) over real HTTP to a scripted server, and with mock_response."""

from __future__ import annotations

import pytest

from agents.llm import (
    CostCeilingReached,
    LLMCallFailed,
    LLMCallRecord,
    LLMClient,
    LLMConfigError,
    MissingAPIKey,
    check_api_key,
)
from agents.scripted_server import ScriptedError, ScriptedLLMServer

MSG = [{"role": "user", "content": "propose something"}]


class Sleeps:
    """Records the backoff instead of waiting it out."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, s: float) -> None:
        self.waits.append(s)


def test_success_records_tokens_and_zero_cost_for_local_server():
    records: list[LLMCallRecord] = []
    with ScriptedLLMServer(["a reply"]) as srv:
        client = LLMClient(on_llm_call=records.append)
        reply = client.complete(persona="architect", model="openai/scripted", messages=MSG, api_base=srv.api_base, max_tokens=50)
        assert srv.requests[0]["messages"] == MSG and srv.requests[0]["max_tokens"] == 50
    assert reply.text == "a reply" and reply.attempts == 1
    assert len(records) == 1
    r = records[0]
    assert (r.persona, r.model, r.error, r.cost_usd) == ("architect", "openai/scripted", None, 0.0)
    assert r.prompt_tokens > 0 and r.completion_tokens > 0 and r.latency_s > 0


def test_rate_limit_and_server_errors_are_retried_with_backoff():
    records: list[LLMCallRecord] = []
    sleeps = Sleeps()
    script = [ScriptedError(429, "slow down"), ScriptedError(500, "oops"), ScriptedError(503), "finally"]
    with ScriptedLLMServer(script) as srv:
        client = LLMClient(on_llm_call=records.append, backoff_base_s=1.0, sleep=sleeps)
        reply = client.complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base)
        assert len(srv.requests) == 4  # one HTTP request per attempt: no hidden retries inside litellm
    assert reply.text == "finally" and reply.attempts == 4
    assert [r.error is None for r in records] == [False, False, False, True]
    assert "RateLimitError" in records[0].error and "InternalServerError" in records[1].error
    assert len(sleeps.waits) == 3
    assert 0.5 <= sleeps.waits[0] <= 1.0 and 1.0 <= sleeps.waits[1] <= 2.0 and 2.0 <= sleeps.waits[2] <= 4.0


def test_retry_after_header_is_honoured():
    sleeps = Sleeps()
    with ScriptedLLMServer([ScriptedError(429, retry_after=7), "ok"]) as srv:
        LLMClient(sleep=sleeps).complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base)
    assert sleeps.waits == [7.0]


def test_persistent_server_error_fails_after_retries():
    records: list[LLMCallRecord] = []
    with ScriptedLLMServer([ScriptedError(500)]) as srv:
        client = LLMClient(on_llm_call=records.append, max_retries=2, sleep=Sleeps())
        with pytest.raises(LLMCallFailed, match="after 3 attempts"):
            client.complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base)
        assert len(srv.requests) == 3
    assert len(records) == 3 and all(r.error for r in records)


def test_bad_key_is_a_configuration_error_not_retried():
    with ScriptedLLMServer([ScriptedError(401, "invalid api key")]) as srv:
        with pytest.raises(LLMConfigError, match="invalid api key"):
            LLMClient(sleep=Sleeps()).complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base)
        assert len(srv.requests) == 1


def test_bad_request_is_a_failed_call():
    with ScriptedLLMServer([ScriptedError(400, "context too long")]) as srv:
        with pytest.raises(LLMCallFailed, match="context too long"):
            LLMClient(sleep=Sleeps()).complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base)


def test_timeout_is_retried_then_fails():
    with ScriptedLLMServer(["late"], delay_s=1.5) as srv:
        client = LLMClient(max_retries=1, sleep=Sleeps())
        with pytest.raises(LLMCallFailed, match="Timeout"):
            client.complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base, timeout_s=0.3)
        assert len(srv.requests) == 2


def test_mock_response_costs_and_cost_ceiling():
    records: list[LLMCallRecord] = []
    client = LLMClient(on_llm_call=records.append, cost_ceiling_usd=1e-9)
    reply = client.complete(persona="p", model="gpt-4o", messages=MSG, mock_response="mocked reply")
    assert reply.text == "mocked reply"
    assert records[0].cost_usd > 0 and client.spent_usd == pytest.approx(records[0].cost_usd)
    with pytest.raises(CostCeilingReached, match="cost ceiling reached"):
        client.complete(persona="p", model="gpt-4o", messages=MSG, mock_response="again")
    assert len(records) == 1  # the refused call never went out


def test_resumed_spend_counts_against_the_ceiling():
    client = LLMClient(cost_ceiling_usd=5.0, spent_usd=5.0)
    with pytest.raises(CostCeilingReached):
        client.complete(persona="p", model="gpt-4o", messages=MSG, mock_response="x")


def test_missing_key_names_the_environment_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingAPIKey, match="ANTHROPIC_API_KEY"):
        LLMClient().complete(persona="p", model="anthropic/claude-3-5-sonnet-20241022", messages=MSG)
    monkeypatch.delenv("MY_PROXY_KEY", raising=False)
    with pytest.raises(MissingAPIKey, match="MY_PROXY_KEY"):
        check_api_key("openai/foo", "https://proxy.example.com/v1", api_key_env="MY_PROXY_KEY")
    check_api_key("openai/local", "http://127.0.0.1:8080/v1")  # local servers need no key


def test_api_key_env_is_sent_as_the_key(monkeypatch):
    monkeypatch.setenv("MY_PROXY_KEY", "sk-test-123")
    with ScriptedLLMServer(["ok"]) as srv:
        LLMClient().complete(persona="p", model="openai/scripted", messages=MSG, api_base=srv.api_base, api_key_env="MY_PROXY_KEY")
    assert srv.authorizations == ["Bearer sk-test-123"]
