"""HTTP client for a remote billing service (``BATCHOPS_BILLING_URL``), with the
seed's timeout (8 s), retries (3, exponential backoff) and circuit breaker
(5 failures open it for 30 s, then half-open)."""

from __future__ import annotations

from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from batchops.core.circuit import CircuitBreaker
from batchops.settings import Settings

log = structlog.get_logger(__name__)


class BillingUnavailable(Exception):
    """The billing service could not answer (down, timing out, 5xx, circuit open)."""


class BillingRejected(Exception):
    """The billing service answered with a 4xx: retrying the same call cannot help."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _ServerError)


class _ServerError(Exception):
    """A 5xx answer: worth a retry, counted by the breaker."""


class BillingClient:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert settings.billing_url
        self.retries = settings.http_retries
        self.backoff = settings.http_retry_base_seconds
        self.breaker = CircuitBreaker(settings.circuit_breaker_threshold, settings.circuit_breaker_reset_seconds)
        self.http = httpx.AsyncClient(
            base_url=settings.billing_url.rstrip("/"),
            timeout=settings.http_timeout_ms / 1000,
            headers={"X-Service-Token": settings.service_token},
            transport=transport,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, json: Any = None) -> Any:
        """One logical call: up to ``retries`` retries, each attempt through the breaker."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.retries + 1),
                wait=wait_exponential(multiplier=self.backoff, max=30),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    return await self._attempt(method, path, json)
        except (httpx.TransportError, _ServerError) as exc:
            raise BillingUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, method: str, path: str, json: Any) -> Any:
        try:
            self.breaker.before_call()
        except Exception as exc:
            raise BillingUnavailable(str(exc)) from exc
        try:
            response = await self.http.request(method, path, json=json)
        except httpx.TransportError:
            self.breaker.failed()
            raise
        if response.status_code >= 500:
            self.breaker.failed()
            raise _ServerError(f"billing answered {response.status_code}")
        self.breaker.succeeded()
        if response.status_code >= 400:
            status = response.status_code
            raise BillingRejected(f"billing answered {status}: {response.text[:500]}", status)
        return response.json()["data"]

    async def report_usage(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(await self.call("POST", "/api/internal/metering/device-usage/batch", {"events": events}))

    async def balance(self, user_id: str) -> dict[str, Any] | None:
        """The user's balance, or None if billing knows no such user (an answer about that
        user, not about billing: the caller's own checks fail that user's item)."""
        try:
            return dict(await self.call("GET", f"/api/internal/balance/user/{user_id}"))
        except BillingRejected as exc:
            if exc.status_code == 404:
                return None
            raise
