"""Adaptive concurrency (seed 003 §3 错误 Fallback): a batch whose renders fail too often
gets fewer slots, and wins them back one at a time once they succeed again.

Judged over the batch's recent outcomes (the last ``DEGRADE_WINDOW`` since its limit last
changed, once there are ``DEGRADE_MIN_OUTCOMES``): past a ``DEGRADE_FAILURE_RATE`` share of
failures the limit is cut by 40 % (never below 1); after ``DEGRADE_MIN_OUTCOMES`` successes in
a row it goes one step back up, never above the plan's."""

from __future__ import annotations

import structlog

from batchops.studio import metrics
from batchops.studio.config import DEGRADE_FAILURE_RATE, DEGRADE_MIN_OUTCOMES, DEGRADE_WINDOW, degraded_concurrency
from batchops.studio.models import StudioBatch

log = structlog.get_logger(__name__)


def observe(batch: StudioBatch, *, failed: bool) -> None:
    """Count one finished attempt of the batch, moving its ``concurrency_limit`` as the rule says."""
    window = [*(batch.recent_outcomes or []), 1 if failed else 0][-DEGRADE_WINDOW:]
    rate = sum(window) / len(window)
    metrics.FAILURE_RATE.labels(plan=batch.plan).set(rate)
    if len(window) >= DEGRADE_MIN_OUTCOMES and rate > DEGRADE_FAILURE_RATE and batch.concurrency_limit > 1:
        before = batch.concurrency_limit
        batch.concurrency_limit = degraded_concurrency(before)
        batch.degradations += 1
        metrics.DEGRADATIONS.inc()
        log.warning("studio_concurrency_degraded", batch_id=batch.id, rate=rate, before=before)
        window = []
    elif (
        len(window) >= DEGRADE_MIN_OUTCOMES
        and not any(window[-DEGRADE_MIN_OUTCOMES:])
        and batch.concurrency_limit < batch.max_concurrency
    ):
        batch.concurrency_limit += 1
        log.info("studio_concurrency_recovered", batch_id=batch.id, limit=batch.concurrency_limit)
        window = []
    batch.recent_outcomes = window
