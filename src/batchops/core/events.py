"""Domain events: written to the outbox, published by the worker to in-process
subscribers and, when ``BATCHOPS_AMQP_URL`` is set, to RabbitMQ (topic exchange
``batchops.events``, routing key = event name, persistent, publisher confirms).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from batchops.core.db import utcnow
from batchops.core.outbox import Delivery, OutboxItem

log = structlog.get_logger(__name__)

EVENT_KIND = "event"

Subscriber = Callable[[dict[str, Any]], Awaitable[None]]


def occurred_at() -> str:
    return utcnow().isoformat().replace("+00:00", "Z")


def event(name: str, data: dict[str, Any], at: str | None = None) -> OutboxItem:
    """An outbox item for event ``name`` with the seed's ``{event, data}`` shape.
    ``at``: the ``occurredAt`` a batch's events share (one clock read per batch)."""
    return OutboxItem(
        kind=EVENT_KIND, name=name, payload={"event": name, "data": data, "occurredAt": at or occurred_at()}
    )


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Subscriber]] = defaultdict(list)
        self._connection: Any = None
        self._exchange: Any = None

    def subscribe(self, name: str, handler: Subscriber) -> None:
        """Listen to one event name, or to every event with ``"*"``."""
        self._subscribers[name].append(handler)

    def unsubscribe(self, name: str, handler: Subscriber) -> None:
        """Stop a subscription (a test or a closing component must not leave handlers behind)."""
        if handler in self._subscribers.get(name, ()):
            self._subscribers[name].remove(handler)

    async def start(self, amqp_url: str | None, exchange: str = "batchops.events") -> None:
        if not amqp_url:
            return
        import aio_pika

        self._connection = await aio_pika.connect_robust(amqp_url)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        log.info("amqp_connected", exchange=exchange)

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = self._exchange = None

    async def deliver(self, deliveries: list[Delivery]) -> dict[int, str]:
        """Outbox handler for ``event`` rows."""
        errors: dict[int, str] = {}
        for d in deliveries:
            message = {**d.payload, "id": d.id}
            try:
                if self._exchange is not None:
                    await self._publish_amqp(d.id, d.name, message)
                for handler in (*self._subscribers.get(d.name, ()), *self._subscribers.get("*", ())):
                    await handler(message)
            except Exception as exc:
                log.warning("event_publish_failed", event=d.name, id=d.id, error=str(exc))
                errors[d.id] = f"{type(exc).__name__}: {exc}"
        return errors

    async def _publish_amqp(self, message_id: int, name: str, message: dict[str, Any]) -> None:
        import aio_pika

        await self._exchange.publish(
            aio_pika.Message(
                body=json.dumps(message, default=str).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(message_id),
                type=name,
            ),
            routing_key=name,
        )
