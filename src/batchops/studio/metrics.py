"""Studio metrics (seed 003 监控要点: failure rate, processing time, API call rate, credit use)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from batchops.studio.config import BATCH_CONFIG, IMAGE_CREDITS, VIDEO_CREDITS
from batchops.studio.models import FINAL_STATES
from batchops.studio.providers import ERROR_KINDS

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


def declare(provider: str) -> None:
    """Every series the dashboards and alerts in deploy/ read exists from start-up, at zero
    (a failure-rate panel shows 0 %, not "no data", before the first task ends)."""
    models = [*dict.fromkeys(m for m, _, _ in VIDEO_CREDITS), *IMAGE_CREDITS]
    for model in models:
        for state in FINAL_STATES:
            TASKS_FINISHED.labels(state=state, model=model)
        CREDITS_CONSUMED.labels(model=model)
        CREDITS_RETURNED.labels(model=model)
    for model, resolution in dict.fromkeys((m, r) for m, r, _ in VIDEO_CREDITS):
        PROCESSING_SECONDS.labels(model=model, resolution=resolution)
    for model in IMAGE_CREDITS:  # images have no resolution
        PROCESSING_SECONDS.labels(model=model, resolution="-")
    for call in ("submit", "find", "status", "cancel"):
        for outcome in ("ok", "error"):
            PROVIDER_CALLS.labels(provider=provider, call=call, outcome=outcome)
    for outcome in ("succeeded", *ERROR_KINDS):
        ATTEMPTS.labels(outcome=outcome)
    for plan in BATCH_CONFIG:
        FAILURE_RATE.labels(plan=plan)
