"""Events reach RabbitMQ: a scheduler allocate, once the outbox is delivered, is
received by a consumer bound to the ``batchops.events`` topic exchange with the
event name as routing key. Needs RabbitMQ (``BATCHOPS_TEST_AMQP_URL``): skipped
locally when unreachable, a failure under CI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import httpx
import pytest

from batchops.app import create_app
from batchops.assembly import build_runtime
from batchops.core.runtime import Runtime
from batchops.identity.service import IdentityService
from tests.conftest import AMQP_URL, DEADLINE, EXCHANGE, auth, make_settings
from tests.helpers import create_devices, create_users, data


@pytest.fixture
async def amqp_runtime(runtime: Runtime, database_url: str) -> AsyncIterator[Runtime]:
    """A runtime publishing to RabbitMQ, on the same (cleaned) database as ``runtime``."""
    rt = build_runtime(make_settings(database_url, amqp_url=AMQP_URL))
    await rt.start()
    yield rt
    await rt.stop()


async def test_allocate_event_reaches_a_bound_consumer(
    amqp: aio_pika.abc.AbstractRobustConnection, amqp_runtime: Runtime
) -> None:
    channel = await amqp.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="device.allocated")

    app = create_app(amqp_runtime.settings, amqp_runtime)
    admin_id, user_id = f"admin-{uuid.uuid4().hex[:8]}", f"user-{uuid.uuid4().hex[:8]}"
    await amqp_runtime.services.get(IdentityService).ensure_admin(admin_id)
    admin = auth(admin_id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batchops.test") as client:
        await create_users(client, admin, [{"userId": user_id}])
        await create_devices(client, admin, 1, prefix=f"dev-{uuid.uuid4().hex[:6]}")
        body = {"userId": user_id, "durationMinutes": 30}
        r = await client.post("/scheduler/devices/allocate", json=body, headers=admin)
        allocation_id = data(r)["allocationId"]

    assert await amqp_runtime.outbox.drain() > 0  # the worker's delivery step: publish with confirms

    received: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with asyncio.timeout(DEADLINE), queue.iterator() as messages:  # others may share the broker
        async for message in messages:
            async with message.process():
                received.append(message)
                body: dict[str, Any] = json.loads(message.body)
                if body["data"].get("allocationId") == allocation_id:
                    break
    message = received[-1]
    assert message.routing_key == "device.allocated"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert body["event"] == "device.allocated" and message.type == "device.allocated"
    assert body["data"]["userId"] == user_id and body["data"]["deviceId"].startswith("dev-")
    assert message.message_id == str(body["id"])
    await channel.close()
