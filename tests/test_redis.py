"""WebSocket pushes fan out over Redis: a notification made by one process reaches a
user connected to another. Two Runtime instances share one Redis channel; each has
its own in-process hub. Needs Redis (``BATCHOPS_TEST_REDIS_URL``): skipped locally
when unreachable, a failure under CI."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.core.push import CHANNEL
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from tests.conftest import auth, make_settings, require_service
from tests.helpers import create_devices, create_users, data

REDIS_URL = os.environ.get("BATCHOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEADLINE = 10.0


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(client.ping(), timeout=5)
    except Exception as exc:
        await client.aclose()
        require_service("Redis", str(exc) or type(exc).__name__)
    yield client
    await client.aclose()


@pytest.fixture
async def two_runtimes(
    runtime: Runtime, database_url: str, redis_client: aioredis.Redis
) -> AsyncIterator[list[Runtime]]:
    """Two processes' worth of runtime on one (cleaned) database and one Redis."""
    ((_, before),) = await redis_client.pubsub_numsub(CHANNEL)
    pair = [build_runtime(make_settings(database_url, redis_url=REDIS_URL)) for _ in range(2)]
    for rt in pair:
        await rt.start()
    # Both subscriptions registered at the server before anything is published.
    async with asyncio.timeout(DEADLINE):
        while True:  # polls the server's own count; no fixed sleep
            ((_, subscribed),) = await redis_client.pubsub_numsub(CHANNEL)
            if subscribed >= before + 2:
                break
            await asyncio.sleep(0.01)
    yield pair
    for rt in pair:
        await rt.stop()


async def test_allocation_notification_fans_out_to_the_other_runtime(two_runtimes: list[Runtime]) -> None:
    first, second = two_runtimes
    admin_id, user_id = f"admin-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    on_second = second.push.subscribe(user_id)  # the user's WebSocket is served by the other process
    on_first = first.push.subscribe(user_id)
    await first.services.get(IdentityService).ensure_admin(admin_id)
    admin = auth(admin_id)
    app = create_app(first.settings, first)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batchops.test") as client:
        await create_users(client, admin, [{"userId": user_id}])
        await create_devices(client, admin, 1, prefix=f"dev-{uuid.uuid4().hex[:6]}")
        body = {"userId": user_id, "durationMinutes": 30}
        r = await client.post("/scheduler/devices/allocate", json=body, headers=admin)
        allocation_id = data(r)["allocationId"]

    for queue in (on_second, on_first):
        message = await asyncio.wait_for(queue.get(), DEADLINE)
        assert message["type"] == "notification"
        assert message["notificationType"] == "device.allocated"
        assert message["data"]["allocationId"] == allocation_id
    assert on_second.empty() and on_first.empty()  # delivered once per hub, not echoed
    second.push.unsubscribe(user_id, on_second)
    first.push.unsubscribe(user_id, on_first)


async def test_batch_rate_limits_are_shared_by_every_process(redis_client: aioredis.Redis) -> None:
    """Two processes' limiters count one caller's calls together (seed 000 §4 per user,
    not per process), on a moving window: no minute boundary resets the count."""
    from batchops.core.errors import TooManyRequestsError
    from batchops.core.ratelimit import RateLimiter

    key = f"scheduler.batch_allocate:user-{uuid.uuid4().hex[:8]}"
    first, second = RateLimiter(3, REDIS_URL), RateLimiter(3, REDIS_URL)
    await first.hit(key)
    await second.hit(key)
    await first.hit(key)
    with pytest.raises(TooManyRequestsError) as refused:
        await second.hit(key)
    assert 1 <= refused.value.retry_after <= 60
    await RateLimiter(3, REDIS_URL).hit(f"{key}-other")  # another caller has an allowance of their own
