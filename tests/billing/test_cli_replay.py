"""`batchops billing replay` (a separate process) delivers what the server's replay
endpoint would: the due events reach RabbitMQ, not only the outbox's ``delivered``
column. With a broker it cannot reach, it refuses and replays nothing. The first test
needs RabbitMQ (``BATCHOPS_TEST_AMQP_URL``): skipped locally when unreachable, a
failure under CI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx

from batchops.billing.usage import USAGE_KIND
from batchops.core.runtime import Runtime
from tests.billing.test_billing_api import release_all
from tests.conftest import AMQP_URL, DEADLINE, EXCHANGE, JWT_SECRET, SERVICE_TOKEN
from tests.helpers import create_devices, create_users, execute, sql


async def replay_cli(database_url: str, amqp_url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BATCHOPS_DATABASE_URL": database_url,
        "BATCHOPS_AMQP_URL": amqp_url,
        "BATCHOPS_JWT_SECRET": JWT_SECRET,
        "BATCHOPS_SERVICE_TOKEN": SERVICE_TOKEN,
        "COLUMNS": "200",
    }
    exe = Path(sys.executable).parent / "batchops"
    args = [str(exe), "billing", "replay"]
    # in a thread: the loop keeps serving the consumer's connection meanwhile
    return await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True, timeout=60)


async def released_with_dead_usage(client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime) -> str:
    """One allocation released, its events still due, its usage report dead-lettered."""
    user = f"replay-{uuid.uuid4().hex[:8]}"  # the broker may be shared: our messages are told apart by user
    await create_users(client, admin, [{"userId": user}])
    await create_devices(client, admin, 1)
    await release_all(client, admin, user, 1)
    await execute(runtime, f"UPDATE outbox SET status = 'dead', attempts = 5 WHERE kind = '{USAGE_KIND}'")
    return user


async def outbox_states(runtime: Runtime) -> dict[str, set[str]]:
    rows = await sql(runtime, "SELECT kind, status FROM outbox")
    states: dict[str, set[str]] = {}
    for kind, status in rows:
        states.setdefault(kind, set()).add(status)
    return states


async def test_cli_replay_publishes_the_events_it_delivers(
    amqp: aio_pika.abc.AbstractRobustConnection,
    client: httpx.AsyncClient,
    admin: dict[str, str],
    runtime: Runtime,
    database_url: str,
) -> None:
    channel = await amqp.channel()
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key="device.*")
    user = await released_with_dead_usage(client, admin, runtime)

    done = await replay_cli(database_url, AMQP_URL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "requeued 1 dead-lettered usage reports" in done.stdout
    states = await outbox_states(runtime)
    assert states["event"] == {"delivered"} and states[USAGE_KIND] == {"delivered"}
    assert len(await sql(runtime, "SELECT 1 FROM billing_usage")) == 1

    expected = {"device.allocated", "device.released"}
    seen: set[str] = set()
    async with asyncio.timeout(DEADLINE), queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                body: dict[str, Any] = json.loads(message.body)
                if body["data"].get("userId") == user:
                    seen.add(body["event"])
            if seen == expected:
                break
    await channel.close()


async def test_cli_replay_refuses_when_the_broker_is_unreachable(
    client: httpx.AsyncClient, admin: dict[str, str], runtime: Runtime, database_url: str
) -> None:
    await released_with_dead_usage(client, admin, runtime)
    before = await outbox_states(runtime)
    assert before["event"] == {"pending"} and before[USAGE_KIND] == {"dead"}

    done = await replay_cli(database_url, "amqp://guest:guest@127.0.0.1:1/")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "replay refused" in done.stdout and "BATCHOPS_AMQP_URL" in done.stdout
    assert "Nothing was replayed" in done.stdout
    assert await outbox_states(runtime) == before
