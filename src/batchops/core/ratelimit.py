"""Rate limits on a moving window (the ``limits`` library): seed 000 §4's batch calls
per user and endpoint per minute, and the console's failed sign-ins.

In-process by default; shared by every process through Redis when
``BATCHOPS_REDIS_URL`` is set. A Redis outage does not refuse or wave through every
call: the process counts on its own until Redis answers again.
"""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from batchops.core.errors import TooManyRequestsError

log = structlog.get_logger(__name__)


def storage(redis_url: str | None, prefix: str) -> Storage:
    """Where counts live: Redis (shared by every process) or this process."""
    if redis_url:
        return RedisStorage(redis_url, implementation="redispy", key_prefix=prefix)
    return MemoryStorage()


class Window:
    """One limit (``item``) counted per key on a moving window, with a local fallback."""

    def __init__(self, item: RateLimitItem, redis_url: str | None, prefix: str) -> None:
        self.item = item
        self.shared = MovingWindowRateLimiter(storage(redis_url, prefix))
        self.local = MovingWindowRateLimiter(MemoryStorage()) if redis_url else self.shared

    async def hit(self, *key: str) -> bool:
        """Count one for ``key``: whether it was within the limit."""
        try:
            return await self.shared.hit(self.item, *key)
        except Exception:  # Redis unreachable: limit this process on its own meanwhile
            log.warning("rate_limit_redis_unavailable_using_local")
            return await self.local.hit(self.item, *key)

    async def allows(self, *key: str) -> bool:
        """Whether one more hit would be within the limit (counts nothing)."""
        try:
            return await self.shared.test(self.item, *key)
        except Exception:
            return await self.local.test(self.item, *key)

    async def retry_after(self, *key: str) -> int:
        """Whole seconds until the window lets ``key`` through again (at least 1)."""
        try:
            stats = await self.shared.get_window_stats(self.item, *key)
        except Exception:
            stats = await self.local.get_window_stats(self.item, *key)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def clear(self, *key: str) -> None:
        try:
            await self.shared.clear(self.item, *key)
        except Exception:
            await self.local.clear(self.item, *key)


class RateLimiter:
    """Batch calls per user and endpoint per minute (0: unlimited)."""

    def __init__(self, limit_per_minute: int, redis_url: str | None = None) -> None:
        self.limit = limit_per_minute
        self.window = Window(RateLimitItemPerMinute(max(1, limit_per_minute)), redis_url, "batchops-rl")

    async def hit(self, key: str) -> None:
        """Count one call for ``key``; raise 429 with Retry-After past the limit."""
        if not self.limit or await self.window.hit(key):
            return
        retry_after = await self.window.retry_after(key)
        raise TooManyRequestsError(
            f"Rate limit exceeded: at most {self.limit} calls per minute; retry in {retry_after}s",
            retry_after=retry_after,
        )

    async def close(self) -> None:
        """Nothing to release: ``limits`` manages its own connections."""
