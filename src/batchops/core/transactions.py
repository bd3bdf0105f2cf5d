"""Units of work the database may abort: the lock order that makes it rare, the retry
that makes it invisible.

**Lock order.** Every transaction that waits for locks takes them in this order, each
kind in the order given, so two transactions never wait for each other in a cycle:

1. the allocate lock (advisory, ``scheduler.allocate``), first: every transaction that
   claims free devices (allocate, queue grants, reservation starts and bookings) holds
   it, so a free device is claimed by one transaction at a time and its row never waits;
2. allocation rows, in id order (release, extend), then the devices they hold: an
   allocated device is freed only by the holder of its allocation's lock;
3. ledger accounts, in id order, ``FOR NO KEY UPDATE`` (so foreign-key checks of new
   holds and entries do not queue behind them);
4. ledger holds, in reference order.

Rows taken with ``SKIP LOCKED`` (outbox messages, queue entries, due reservations,
allocations due a reminder, studio tasks) never wait. Inserted rows (usage, entries,
events) lock nothing older.

**Retry.** PostgreSQL may still abort a transaction, for a deadlock with a path outside
this order or a serialization failure: nothing of it was written. :func:`run_retrying`
runs the whole unit of work again (a bounded number of times, after a short random
wait, so two victims do not meet again), then answers 503 with ``Retry-After``. It is
used through :meth:`batchops.core.db.Database.run`, which the batch runner and the
single-item paths call with their work as a function of the session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

from batchops.core.errors import database_busy, is_retryable_abort

log = structlog.get_logger(__name__)

T = TypeVar("T")

ATTEMPTS = 5  # runs of one unit of work before it is refused with 503
# random waits between runs: up to 20 ms, 40 ms, 80 ms, 160 ms
BACKOFF = wait_random_exponential(multiplier=0.02, max=0.5)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.info("transaction_retried", attempt=state.attempt_number, error=type(error).__name__)


async def run_retrying(unit: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS, wait: wait_base = BACKOFF) -> T:
    """``unit()``, run again while the database aborts it for a deadlock or a serialization
    failure; after ``attempts`` runs, 503 ``ServiceUnavailableException`` with
    ``Retry-After``. Any other error is raised at once."""
    try:
        return await unit()  # the usual run, without the retry machinery
    except Exception as error:
        if not is_retryable_abort(error):
            raise
        aborted = [error]

    async def again() -> T:
        if aborted:  # tenacity's first attempt is the run above: it waits, then runs the unit
            raise aborted.pop()
        return await unit()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(is_retryable_abort),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        return await retrying(again)
    except Exception as error:
        if not is_retryable_abort(error):
            raise
        log.warning("transaction_given_up", attempts=attempts, error=str(error))
        raise database_busy(
            f"The database aborted the transaction {attempts} times (conflicting concurrent work); retry"
        ) from error
