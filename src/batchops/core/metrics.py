"""Prometheus metrics shared by every domain (one registry: the default one)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000)


@dataclass(frozen=True)
class BatchMetrics:
    operations: Counter
    duration: Histogram
    size: Histogram
    partial_failure_rate: Gauge

    def declare(self, operations: Iterable[str]) -> None:
        """Every series of these operations exists from start-up, at zero: a dashboard or an
        alert reads 0 rather than "no data" until the first batch."""
        for operation in operations:
            for status in ("success", "failed"):
                self.operations.labels(operation=operation, status=status)
            self.duration.labels(operation=operation)
            self.size.labels(operation=operation)
            self.partial_failure_rate.labels(operation=operation)

    def observe(self, operation: str, *, succeeded: int, failed: int, seconds: float) -> None:
        if succeeded:
            self.operations.labels(operation=operation, status="success").inc(succeeded)
        if failed:
            self.operations.labels(operation=operation, status="failed").inc(failed)
        total = succeeded + failed
        self.duration.labels(operation=operation).observe(seconds)
        self.size.labels(operation=operation).observe(total)
        self.partial_failure_rate.labels(operation=operation).set(failed / total if total else 0.0)


@cache
def batch_metrics(domain: str) -> BatchMetrics:
    """``<domain>_batch_*`` metrics, created once per domain (names from seed 000)."""
    return BatchMetrics(
        operations=Counter(
            f"{domain}_batch_operations_total", "Items processed by batch operations", ["operation", "status"]
        ),
        duration=Histogram(f"{domain}_batch_operation_duration_seconds", "Duration of one batch call", ["operation"]),
        size=Histogram(
            f"{domain}_batch_size_distribution", "Items per batch call", ["operation"], buckets=BATCH_SIZE_BUCKETS
        ),
        partial_failure_rate=Gauge(
            f"{domain}_batch_partial_failure_rate", "Failed share of the last batch call", ["operation"]
        ),
    )


OUTBOX_DELIVERED = Counter("outbox_delivered_total", "Outbox rows delivered", ["kind"])
OUTBOX_FAILED = Counter("outbox_failed_total", "Outbox delivery attempts that failed", ["kind"])
OUTBOX_DEAD = Counter("outbox_dead_lettered_total", "Outbox rows moved to the dead-letter state", ["kind"])


def declare_outbox_kind(kind: str) -> None:
    """The delivery counters of a kind exist, at zero, once a handler is registered for it."""
    for counter in (OUTBOX_DELIVERED, OUTBOX_FAILED, OUTBOX_DEAD):
        counter.labels(kind=kind)
