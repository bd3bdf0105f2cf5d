"""The shared schedule of periodic jobs (table ``job_schedule``): one row per job, whose
``next_run_at`` a worker moves forward before it runs the job, so that each job runs
once per interval across every worker process, not once per process."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import String, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base, Database, insert_ignore


class JobSchedule(Base):
    __tablename__ = "job_schedule"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime]
    last_started_at: Mapped[datetime | None]
    last_owner: Mapped[str | None] = mapped_column(String(128))


@dataclass(frozen=True, slots=True)
class Claim:
    mine: bool  # this worker moved ``next_run_at`` forward: it runs the job now
    next_run_at: datetime  # when the job is due next, whoever runs it


async def claim_run(
    db: Database, name: str, *, interval: timedelta, now: datetime, owner: str, first_run_at: datetime
) -> Claim:
    """Take this interval's run of job ``name`` if nobody has.

    The row is created on first sight (``first_run_at``; a concurrent creator wins
    silently), then one conditional UPDATE moves ``next_run_at`` forward only while it
    is due: on PostgreSQL a concurrent UPDATE waits for the row lock and re-checks the
    condition against the moved row, on SQLite the transaction holds the write lock,
    so exactly one worker sees rowcount 1 per interval.
    """
    next_run_at = now + interval
    async with db.transaction() as session:
        await insert_ignore(session, JobSchedule, [{"name": name, "next_run_at": first_run_at}], key=["name"])
        moved = await session.execute(
            update(JobSchedule)
            .where(
                JobSchedule.name == name,
                # a row further ahead than one interval (the interval was shortened, or a
                # clock ran ahead when it was written) is due now, not then
                or_(JobSchedule.next_run_at <= now, JobSchedule.next_run_at > next_run_at),
            )
            .values(next_run_at=next_run_at, last_started_at=now, last_owner=owner)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            return Claim(True, next_run_at)
        current = await session.scalar(select(JobSchedule.next_run_at).where(JobSchedule.name == name))
    assert current is not None  # inserted above if it was missing
    return Claim(False, current)
