"""The one clock of a process. Every rule that reads the time asks ``Runtime.clock``
(a callable returning an aware UTC datetime), so tests move time with a
:class:`ManualClock` instead of waiting for it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (and/or ``minutes=``, ``hours=``, ``days=``)."""
        self.now += timedelta(seconds=seconds, **delta)
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when


def iso_utc(ts: datetime) -> str:
    """An instant as the JSON contract writes it (ISO-8601, UTC as ``Z``), as pydantic
    writes the documented models' datetimes: for payloads built as plain dicts."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
