"""Fixed-window rate limits (seed 000 §4: 10 batch calls per minute).

In-process by default; shared by every process through Redis when
``BATCHOPS_REDIS_URL`` is set.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from batchops.core.errors import TooManyRequestsError

log = structlog.get_logger(__name__)

WINDOW_SECONDS = 60


class RateLimiter:
    def __init__(self, limit_per_minute: int, redis_url: str | None = None) -> None:
        self.limit = limit_per_minute
        self._counts: dict[tuple[str, int], int] = {}
        self._redis: Any = None
        if redis_url and limit_per_minute:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(redis_url)

    async def hit(self, key: str) -> None:
        """Count one call for ``key``; raise 429 with Retry-After past the limit."""
        if not self.limit:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
        count = await self._incr(key, window)
        if count > self.limit:
            raise TooManyRequestsError(
                f"Rate limit exceeded: at most {self.limit} calls per minute; retry in {retry_after}s",
                retry_after=retry_after,
            )

    async def _incr(self, key: str, window: int) -> int:
        if self._redis is not None:
            try:
                redis_key = f"batchops:rl:{key}:{window}"
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(redis_key)
                    pipe.expire(redis_key, WINDOW_SECONDS * 2)
                    count, _ = await pipe.execute()
                return int(count)
            except Exception:
                log.warning("rate_limit_redis_unavailable_using_local")
        self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        self._counts[(key, window)] = self._counts.get((key, window), 0) + 1
        return self._counts[(key, window)]

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
