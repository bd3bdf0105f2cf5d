"""A circuit breaker for calls to another service (seed 001: 5 failures open it
for 30 s, then one trial call is let through: half-open).

Small enough to own: the well-known breaker libraries are synchronous or tied to
one framework, and this one needs only a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpenError(Exception):
    """The breaker refused the call without trying it."""


class CircuitBreaker:
    def __init__(self, threshold: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_running = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return CLOSED
        if self.clock() - self.opened_at >= self.reset_seconds:
            return HALF_OPEN
        return OPEN

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` unless a call may go out now."""
        state = self.state
        if state == OPEN or (state == HALF_OPEN and self.trial_running):
            raise CircuitOpenError(f"circuit open after {self.failures} consecutive failures")
        if state == HALF_OPEN:
            self.trial_running = True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.trial_running = 0, None, False

    def failed(self) -> None:
        self.failures += 1
        self.trial_running = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()  # open, or re-open after a failed trial
