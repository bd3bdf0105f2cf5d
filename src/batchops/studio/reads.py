"""The studio's figures for the console: the overview's failure rate, and the quote of a
batch a creator is writing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from batchops.core.clock import Clock, system_clock
from batchops.core.db import Database
from batchops.core.errors import BadRequestError
from batchops.identity.models import User
from batchops.studio.config import PlanConfig, get_batch_config
from batchops.studio.models import FAILED, SUCCEEDED, StudioTask
from batchops.studio.schemas import BatchGenerateIn
from batchops.studio.submit import resolve_rows


async def failure_rate(db: Database, *, hours: int = 1, clock: Clock = system_clock) -> tuple[int, int]:
    """(failed, finished) among the tasks that finished in the last ``hours`` by ``clock``
    (the runtime's): the seed's 监控要点 (the StudioFailureRateHigh alert watches the same share)."""
    since = clock() - timedelta(hours=hours)
    async with db.read() as session:
        rows = await session.execute(
            select(StudioTask.state, func.count())
            .where(StudioTask.finished_at >= since, StudioTask.state.in_((SUCCEEDED, FAILED)))
            .group_by(StudioTask.state)
        )
        counts = {state: int(n) for state, n in rows}
    return counts.get(FAILED, 0), counts.get(FAILED, 0) + counts.get(SUCCEEDED, 0)


@dataclass(frozen=True)
class Quote:
    """What submitting a batch would hold, and whether it would be accepted."""

    plan: PlanConfig
    row_count: int
    prices: list[int]  # per row; empty while a row cannot be priced
    problems: dict[int, str]  # row index → why it has no price
    available: int  # credits not yet held

    @property
    def total(self) -> int:
        return sum(self.prices)

    @property
    def over_size(self) -> bool:
        return self.row_count > self.plan.batch_size

    @property
    def shortfall(self) -> int:
        return max(0, self.total - self.available)

    @property
    def submittable(self) -> bool:
        return self.row_count > 0 and not self.problems and not self.over_size and self.shortfall == 0


def quote(user: User, body: BatchGenerateIn, available: int) -> Quote:
    """The checks the studio's submit makes (the plan's batch size, a price for every row,
    the whole total against the available credits), made without holding anything: what
    the console shows as the creator types."""
    try:
        prices = [r.credits for r in resolve_rows(body)]
        problems: dict[int, str] = {}
    except BadRequestError as exc:
        prices = []
        problems = {
            int(str(d["field"]).rpartition(".")[2]): str(d.get("message", exc.message))
            for d in exc.details or []
            if isinstance(d, dict) and str(d.get("field", "")).startswith("rows.")
        }
        problems = problems or {0: exc.message}
    return Quote(get_batch_config(user.plan), len(body.rows), prices, problems, available)
