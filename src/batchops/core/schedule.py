"""The shared schedule of periodic jobs (table ``job_schedule``): one row per job, whose
``next_run_at`` a worker moves forward before it runs the job, so that each job runs
once per interval across every worker process, not once per process."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from batchops.core.db import Base


class JobSchedule(Base):
    __tablename__ = "job_schedule"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[datetime]
    last_started_at: Mapped[datetime | None]
    last_owner: Mapped[str | None] = mapped_column(String(128))
