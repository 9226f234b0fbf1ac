"""LLM access, only through litellm: one call with timeout, retries, cost and a record.

agents.proposer asks `LLMClient.complete` for a reply; every attempt (successful or
not) becomes an `LLMCallRecord` handed to `on_llm_call`, which the population loop
stores in the `llm_calls` table. The client keeps the run's spend and refuses to call
once the cost ceiling is reached (`CostCeilingReached`). Rate limits, server errors,
timeouts and connection errors are retried with exponential backoff; a missing API key
is a `MissingAPIKey` naming the environment variable; a rejected key or unknown model
is an `LLMConfigError`. Those three stop the run. Anything else that fails after the
retries is an `LLMCallFailed`, which the proposer turns into an `invalid_edit`.

It does not build prompts or parse replies. litellm's remote price-map fetch is
disabled (`LITELLM_LOCAL_MODEL_COST_MAP`, unless the user set it) because the product
must work offline, and its debug banner is suppressed; litellm is imported on first use, not at import of this module.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from arena.errors import EvolveError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMCallRecord:
    """One attempt at one LLM call, for the store's llm_calls table."""

    persona: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    error: str | None  # None on success; else "<ExceptionName>: message"


@dataclass(frozen=True)
class LLMReply:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    attempts: int


class LLMError(EvolveError, RuntimeError):
    """Base of this module's errors."""


class LLMConfigError(LLMError):
    """The run cannot call this model (bad key, unknown model...): fix the configuration."""


class MissingAPIKey(LLMConfigError):
    """A provider key is not in the environment; the message names the variable."""


class CostCeilingReached(LLMError):
    """The run has spent its LLM budget (`--max-cost` / cost_ceiling_usd)."""


class LLMCallFailed(LLMError):
    """A call failed for a reason that is not the configuration (after any retries)."""


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # its "Give Feedback" banner on every error
    return litellm


def is_local_base(api_base: str | None) -> bool:
    if not api_base:
        return False
    host = urlparse(api_base).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def supports_json_mode(model: str) -> bool:
    """Whether litellm says the model takes `response_format` (JSON mode)."""
    try:
        return "response_format" in (_litellm().get_supported_openai_params(model=model) or [])
    except Exception:  # unknown provider: do not send the parameter
        return False


def check_api_key(model: str, api_base: str | None = None, api_key_env: str | None = None) -> None:
    """Raise MissingAPIKey naming the environment variable when the model needs a key
    that is not set. Local servers (127.0.0.1) need none."""
    if is_local_base(api_base):
        return
    if api_key_env:
        if not os.environ.get(api_key_env):
            raise MissingAPIKey(f"model {model} needs an API key: set the environment variable {api_key_env}")
        return
    info = _litellm().validate_environment(model=model, api_base=api_base)
    missing = info.get("missing_keys") or []
    if missing:
        names = " and ".join(missing)
        raise MissingAPIKey(
            f"model {model} needs {names}: set the environment variable{'s' if len(missing) > 1 else ''} "
            f"{names}, or choose another model in program.md"
        )


def _error_text(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}"


def _retry_after(e: BaseException) -> float | None:
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class LLMClient:
    """Calls litellm; thread-safe accounting of the run's spend.

    `on_llm_call` receives one record per attempt. `cost_ceiling_usd=None` means no
    ceiling; `spent_usd` lets a resumed run start from what the store already counted.
    `sleep` is injectable only so that tests of the backoff do not wait."""

    def __init__(
        self,
        on_llm_call: Callable[[LLMCallRecord], None] | None = None,
        cost_ceiling_usd: float | None = None,
        spent_usd: float = 0.0,
        max_retries: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.on_llm_call = on_llm_call
        self.cost_ceiling_usd = cost_ceiling_usd
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._spent = float(spent_usd)
        self.calls = 0

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent

    def _record(self, rec: LLMCallRecord) -> None:
        with self._lock:
            self._spent += rec.cost_usd
            self.calls += 1
        if self.on_llm_call is not None:
            self.on_llm_call(rec)

    def backoff_s(self, attempt: int, error: BaseException | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        hinted = _retry_after(error) if error is not None else None
        if hinted is not None:
            return min(max(hinted, 0.0), self.backoff_max_s)
        base = self.backoff_base_s * (2 ** (attempt - 1))
        return min(base * (0.5 + random.random() / 2), self.backoff_max_s)

    def complete(
        self,
        *,
        persona: str,
        model: str,
        messages: list[dict[str, str]],
        api_base: str | None = None,
        api_key_env: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float = 180.0,
        response_format: dict | None = None,
        mock_response: str | None = None,
    ) -> LLMReply:
        """One completion, retried on transient errors. See the module doc for what it raises."""
        litellm = _litellm()
        if self.cost_ceiling_usd is not None and self.spent_usd >= self.cost_ceiling_usd:
            raise CostCeilingReached(
                f"LLM cost ceiling reached: spent ${self.spent_usd:.4f} of ${self.cost_ceiling_usd:.4f}"
            )
        local = is_local_base(api_base)
        kwargs: dict[str, Any] = dict(model=model, messages=messages, timeout=timeout_s, num_retries=0, max_retries=0)
        if api_base:
            kwargs["api_base"] = api_base
        if api_key_env and os.environ.get(api_key_env):
            kwargs["api_key"] = os.environ[api_key_env]
        elif local:
            kwargs["api_key"] = "local-no-key"
        if temperature is not None:
            kwargs["temperature"] = temperature
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if response_format is not None:
            kwargs["response_format"] = response_format
        if mock_response is not None:
            kwargs["mock_response"] = mock_response
        else:
            check_api_key(model, api_base, api_key_env)

        retryable = (
            litellm.RateLimitError,
            litellm.InternalServerError,
            litellm.ServiceUnavailableError,
            litellm.BadGatewayError,
            litellm.APIConnectionError,
            litellm.Timeout,
        )
        config_errors = (litellm.AuthenticationError, litellm.PermissionDeniedError, litellm.NotFoundError)
        attempt = 0
        while True:
            attempt += 1
            t0 = time.monotonic()
            try:
                resp = litellm.completion(**kwargs)
            except config_errors as e:
                self._record(LLMCallRecord(persona, model, 0, 0, 0.0, time.monotonic() - t0, _error_text(e)))
                raise LLMConfigError(f"model {model} refused the call: {_error_text(e)}") from e
            except retryable as e:
                self._record(LLMCallRecord(persona, model, 0, 0, 0.0, time.monotonic() - t0, _error_text(e)))
                if attempt > self.max_retries:
                    raise LLMCallFailed(f"{model} failed after {attempt} attempts: {_error_text(e)}") from e
                wait = self.backoff_s(attempt, e)
                log.warning("%s: %s; retry %d/%d in %.1fs", model, _error_text(e), attempt, self.max_retries, wait)
                self._sleep(wait)
                continue
            except Exception as e:  # any other provider error: this call failed, the run goes on
                self._record(LLMCallRecord(persona, model, 0, 0, 0.0, time.monotonic() - t0, _error_text(e)))
                raise LLMCallFailed(f"{model} call failed: {_error_text(e)}") from e
            latency = time.monotonic() - t0
            usage = getattr(resp, "usage", None)
            p_tok = int(getattr(usage, "prompt_tokens", 0) or 0)
            c_tok = int(getattr(usage, "completion_tokens", 0) or 0)
            cost = 0.0 if local else self._cost(litellm, resp)
            try:
                text = resp.choices[0].message.content or ""
            except (AttributeError, IndexError, TypeError):
                text = ""
            self._record(LLMCallRecord(persona, model, p_tok, c_tok, cost, latency, None))
            return LLMReply(text, model, p_tok, c_tok, cost, latency, attempt)

    @staticmethod
    def _cost(litellm: Any, resp: Any) -> float:
        try:
            return float(litellm.completion_cost(completion_response=resp) or 0.0)
        except Exception as e:  # unknown price (custom or local model): recorded as 0
            log.debug("no price for %s: %s", getattr(resp, "model", "?"), e)
            return 0.0
