"""Alert rules parse and name real metrics; the circuit breaker and the HTTP client
follow the seed's rules (5 failures open for 30 s, half-open trial, 3 retries)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from batchops.billing import service as billing_service
from batchops.billing.client import BillingClient, BillingUnavailable
from batchops.billing.service import BillingService
from batchops.billing.usage import USAGE_KIND
from batchops.core.circuit import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from batchops.core.outbox import Delivery
from batchops.core.runtime import Runtime
from batchops.scheduler.service import SchedulerService
from tests.billing.conftest import usage
from tests.conftest import auth, make_settings
from tests.helpers import LogRecorder, create_devices, create_users, data, error

ALERTS = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "batchops-dashboard.json"


def test_the_dashboard_has_the_seeds_panels() -> None:
    """Seed 003 监控要点 on the dashboard (that every query's series exists: test_deploy_metrics)."""
    import json

    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {"Studio: task failure rate (target < 10%)", "Studio: credits consumed / returned per minute"} <= {
        p["title"] for p in panels
    }


def test_alert_rules_are_valid() -> None:
    """Valid rules, the seed's alerts (that every series they read exists: test_deploy_metrics)."""
    if shutil.which("promtool"):
        subprocess.run(["promtool", "check", "rules", str(ALERTS)], check=True)
    doc = yaml.safe_load(ALERTS.read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert {"BillingReportFailureRateHigh", "BillingDataLoss", "BillingUnbilledUsage", "StudioFailureRateHigh"} <= set(
        rules
    )
    assert rules["BillingReportFailureRateHigh"]["for"] == "5m"
    for rule in rules.values():
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_half_opens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(5, 30, clock)
    for _ in range(4):
        breaker.before_call()
        breaker.failed()
    assert breaker.state == CLOSED
    breaker.before_call()
    breaker.failed()
    assert breaker.state == OPEN
    with pytest.raises(Exception, match="circuit open"):
        breaker.before_call()
    clock.now = 30
    assert breaker.state == HALF_OPEN
    breaker.before_call()  # the one trial call
    with pytest.raises(Exception, match="circuit open"):
        breaker.before_call()  # no second call while the trial runs
    breaker.failed()
    assert breaker.state == OPEN  # re-opened for another 30 s
    clock.now = 60
    breaker.before_call()
    breaker.succeeded()
    assert breaker.state == CLOSED and breaker.failures == 0


async def test_client_retries_then_opens_the_circuit() -> None:
    calls: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.ConnectError("connection refused", request=request)

    settings = make_settings(
        "sqlite:///unused.db", billing_url="http://billing.test", http_retries=3, http_retry_base_seconds=0
    )
    client = BillingClient(settings, transport=httpx.MockTransport(refuse))
    with pytest.raises(BillingUnavailable):
        await client.balance("u1")
    assert len(calls) == 4  # the call and 3 retries
    with pytest.raises(BillingUnavailable):
        await client.balance("u1")
    assert len(calls) == 5  # the 5th failure opened the circuit: no further attempts
    with pytest.raises(BillingUnavailable, match="circuit open"):
        await client.balance("u1")
    assert len(calls) == 5
    await client.close()


async def test_client_does_not_retry_a_rejection() -> None:
    calls: list[str] = []

    def reject(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(400, json={"success": False, "error": "BadRequestException", "message": "bad"})

    settings = make_settings("sqlite:///unused.db", billing_url="http://billing.test", http_retry_base_seconds=0)
    client = BillingClient(settings, transport=httpx.MockTransport(reject))
    with pytest.raises(Exception, match="billing answered 400"):
        await client.report_usage([])
    assert len(calls) == 1 and client.breaker.state == CLOSED
    await client.close()


@pytest.mark.parametrize("allow", [False, True])
async def test_allow_on_error_decides_when_remote_billing_cannot_answer(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, allow: bool
) -> None:
    """BILLING_ALLOW_ON_ERROR: a real refused connection to a remote billing service."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    settings = make_settings(
        runtime.settings.database_url,
        billing_url=f"http://127.0.0.1:{closed}",
        billing_enforce_balance=True,
        billing_allow_on_error=allow,
        http_retries=1,
        http_retry_base_seconds=0,
    )
    scheduler = runtime.services.get(SchedulerService)
    local = scheduler.billing
    scheduler.billing = BillingService(runtime.db, runtime.outbox, settings, local.ledger)
    try:
        await create_users(client, admin, [{"userId": "u1"}])
        await create_devices(client, admin, 1)
        await client.post("/admin/billing/topup", json={"userId": "u1", "amount": 5}, headers=admin)
        r = await client.post("/scheduler/devices/allocate", json={"durationMinutes": 30}, headers=auth("u1"))
        if allow:
            assert r.status_code == 200, r.text  # allowed; the hold is still taken in the shared ledger
        else:
            error(r, 503, "ServiceUnavailableException")
    finally:
        await scheduler.billing.close()
        scheduler.billing = local


async def test_a_user_remote_billing_does_not_know_fails_alone(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime
) -> None:
    """A 404 from remote billing is an answer about one user, not an outage: that item
    fails as the local checks say (it was a 503 for the whole batch)."""
    asked: list[str] = []

    def billing(request: httpx.Request) -> httpx.Response:
        user_id = request.url.path.rsplit("/", 1)[1]
        asked.append(user_id)
        if user_id == "ghost":
            return httpx.Response(
                404, json={"success": False, "error": "NotFoundException", "message": "User not found"}
            )
        return httpx.Response(200, json={"success": True, "data": {"hasBalance": True, "balance": 5}})

    settings = make_settings(
        runtime.settings.database_url, billing_url="http://billing.test", billing_enforce_balance=True
    )
    scheduler = runtime.services.get(SchedulerService)
    local = scheduler.billing
    scheduler.billing = BillingService(runtime.db, runtime.outbox, settings, local.ledger)
    scheduler.billing.client = BillingClient(settings, transport=httpx.MockTransport(billing))
    try:
        await create_users(client, admin, [{"userId": "u1"}])
        await create_devices(client, admin, 2)
        await client.post("/admin/billing/topup", json={"userId": "u1", "amount": 5}, headers=admin)
        body = {"requests": [{"userId": "u1", "durationMinutes": 30}, {"userId": "ghost", "durationMinutes": 30}]}
        out = data(await client.post("/scheduler/allocations/batch", json=body, headers=admin))
        assert sorted(asked) == ["ghost", "u1"]
        assert out["successCount"] == 1 and [f["error"] for f in out["failures"]] == ["NotFoundException"]
    finally:
        await scheduler.billing.close()
        scheduler.billing = local


async def test_deliveries_log_the_seeds_key_lines(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 001 关键日志, which its test scenarios grep ("💰 Billing", "❌")."""
    service = runtime.services.get(BillingService)
    await create_users(client, admin, [{"userId": "test-user-001"}])
    recorder = LogRecorder()
    monkeypatch.setattr(billing_service, "log", recorder)
    kind = USAGE_KIND
    deliveries = [
        Delivery(1, kind, "usage", usage("abc-100", "test-user-001", seconds=3600), 1),
        Delivery(2, kind, "usage", usage("abc-123", "nobody", seconds=60), 3),
    ]
    assert await service.deliver(deliveries) == {2: "User not found"}
    lines = [(e["level"], e["event"]) for e in recorder.events if not e["event"].startswith("billing_")]
    assert lines == [
        ("info", "💰 Billing data reported for user test-user-001: 3600s"),
        ("error", "❌ Failed to report billing data for allocation abc-123: User not found"),
        ("info", "Batch billing report completed: 1 success, 1 failed"),
    ]
