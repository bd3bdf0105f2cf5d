"""Studio fixtures: a runtime whose clock is a ManualClock, and engines on it.

The service, the engines and the simulated provider all read that clock, so a test moves
it to the next due task (``run_until_idle``) instead of waiting: renders take the seed's
own times (a 1080p video 6-8 minutes) and a test still ends in a moment."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from batchops.assembly import build_runtime
from batchops.core.clock import ManualClock, system_clock
from batchops.core.runtime import Runtime
from batchops.notifications.service import NotificationService
from batchops.studio.engine import Engine
from batchops.studio.simulated import SimulatedProvider
from tests.conftest import auth
from tests.helpers import create_users, data

KIE_CALLBACK_SECRET = "kie-callback-test-secret"  # BATCHOPS_KIE_CALLBACK_SECRET, never the JWT secret


@pytest.fixture(scope="session")
async def runtime(runtime: Runtime) -> AsyncIterator[Runtime]:
    """The session's database, on a runtime whose clock stands still until a test moves it."""
    settings = runtime.settings.model_copy(update={"kie_callback_secret": KIE_CALLBACK_SECRET})
    rt = build_runtime(settings, ManualClock(system_clock()))
    yield rt
    await rt.stop()


@pytest.fixture
def clock(runtime: Runtime) -> ManualClock:
    assert isinstance(runtime.clock, ManualClock)
    return runtime.clock


@pytest.fixture(autouse=True)
def _clock_starts_now(request: pytest.FixtureRequest) -> None:
    """Each test starts at the real time: rows it makes are due for a worker process too."""
    if "runtime" in request.fixturenames:
        request.getfixturevalue("clock").set(system_clock())


def make_engine(
    runtime: Runtime,
    *,
    failure_rate: float = 0.0,
    scale: float = 1.0,
    lease: float = 30.0,
) -> Engine:
    """An engine (and a simulated provider) as a worker builds them, on the runtime's clock."""
    clock = runtime.clock
    provider = SimulatedProvider(runtime.db, clock=clock, time_scale=scale, failure_rate=failure_rate)
    return Engine(
        runtime.db,
        provider,
        runtime.services.get(NotificationService),
        runtime.push,
        clock=clock,
        time_scale=scale,
        lease_seconds=lease,
    )


@pytest.fixture
def engine_factory(runtime: Runtime) -> Callable[..., Engine]:
    def factory(**kwargs: Any) -> Engine:
        return make_engine(runtime, **kwargs)

    return factory


# The clock moves at least this far (provider seconds) between ticks, as for a worker that
# ticks every 10 s: polls due a few seconds apart are made together, which keeps a batch to
# a few dozen ticks. The poll schedule itself is unit-tested (tests/unit/test_studio_scheduling.py).
TICK = 10.0


def next_tick(clock: ManualClock, wait: float) -> None:
    """Move ``clock`` to the next due task (``wait`` seconds away), a tick at least."""
    clock.advance(max(wait, TICK))


async def run_until_idle(engine: Engine) -> None:
    """Every task to its end, the engine's ManualClock moved on whenever nothing is due."""
    clock = engine.clock
    assert isinstance(clock, ManualClock)
    await engine.run_until_idle(limit_seconds=60, advance=lambda wait: next_tick(clock, wait))


async def studio_user(
    client: httpx.AsyncClient, admin: dict[str, str], user_id: str, *, plan: str = "pro", credits: int = 10_000
) -> dict[str, str]:
    await create_users(client, admin, [{"userId": user_id, "plan": plan}])
    if credits:
        r = await client.post(
            "/admin/billing/topup", json={"userId": user_id, "amount": credits, "currency": "CREDITS"}, headers=admin
        )
        data(r)
    return auth(user_id)


def rows(*specs: tuple[str, str, int], prompt: str = "a cat surfing") -> list[dict[str, Any]]:
    return [
        {"prompt": f"{prompt} #{i}", "model": m, "resolution": r, "duration": d} for i, (m, r, d) in enumerate(specs)
    ]
