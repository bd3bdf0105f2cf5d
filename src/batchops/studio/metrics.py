"""Studio metrics (seed 003 监控要点: failure rate, processing time, API call rate, credit use)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_FINISHED = Counter("studio_tasks_finished_total", "Tasks that reached a final state", ["state", "model"])
ATTEMPTS = Counter("studio_task_attempts_total", "Provider attempts by outcome", ["outcome"])
FAILURE_RATE = Gauge("studio_failure_rate", "Failed share of the recent attempts of a batch's owner", ["plan"])
PROCESSING_SECONDS = Histogram(
    "studio_task_processing_seconds",
    "From first submission to the final state",
    ["model", "resolution"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600),
)
PROVIDER_CALLS = Counter("studio_provider_calls_total", "Calls to the video provider", ["provider", "call", "outcome"])
CREDITS_CONSUMED = Counter("studio_credits_consumed_total", "Credits captured for succeeded tasks", ["model"])
CREDITS_RETURNED = Counter("studio_credits_returned_total", "Credits released for failed or cancelled tasks", ["model"])
DEGRADATIONS = Counter("studio_concurrency_degradations_total", "Times a batch's concurrency was cut")
