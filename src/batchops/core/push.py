"""Live pushes to connected users (WebSocket), optionally fanned out over Redis.

What is pushed here is never the only copy: notifications are stored first and
listed by ``GET /notifications``; a push only saves the client a poll. So a push
is best effort and never fails the work that caused it.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import structlog

log = structlog.get_logger(__name__)

CHANNEL = "batchops:push"


class PushHub:
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None

    # --- subscribers (WebSocket handlers) -------------------------------------------
    def subscribe(self, user_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._queues[user_id].add(queue)
        return queue

    def unsubscribe(self, user_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues[user_id].discard(queue)
        if not self._queues[user_id]:
            del self._queues[user_id]

    # --- publishers ----------------------------------------------------------------
    async def publish(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        """Send ``(user_id, message)`` pairs; one Redis round trip for the lot."""
        if not messages:
            return
        if self._redis is not None:
            try:
                await self._redis.publish(CHANNEL, json.dumps(messages, default=str))
                return
            except Exception:
                log.warning("push_redis_failed_falling_back_to_local")
        self._deliver_local(messages)

    def _deliver_local(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        for user_id, message in messages:
            for queue in self._queues.get(user_id, ()):
                if not queue.full():
                    queue.put_nowait(message)

    # --- Redis fan-out ----------------------------------------------------------------
    async def start(self, redis_url: str | None) -> None:
        if not redis_url:
            return
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(redis_url)
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(CHANNEL)
        self._listener = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        async for raw in pubsub.listen():
            if raw.get("type") != "message":
                continue
            try:
                self._deliver_local([tuple(m) for m in json.loads(raw["data"])])
            except Exception:
                log.exception("push_bad_message")

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
