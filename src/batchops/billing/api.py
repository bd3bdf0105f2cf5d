"""HTTP routes of billing: the seed's internal endpoints (service token), the
user's usage history, and the admin's top-up and dead-letter tools."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Security

from batchops.billing.ledger import CREDITS, Balance
from batchops.billing.schemas import (
    BalanceOut,
    DeadLetterOut,
    DeviceUsageBatchIn,
    DeviceUsageBatchOut,
    DeviceUsageIn,
    ReplayOut,
    TopupIn,
    TopupOut,
    UsageHistoryOut,
    UsageItem,
    UsageResult,
    UsageTotals,
)
from batchops.billing.service import BillingService
from batchops.core.auth import check_service_token, service_token_scheme
from batchops.core.runtime import Runtime, get_runtime, service_of
from batchops.core.schemas import Envelope, Page, PageParams, cents_to_decimal, decimal_to_cents, ok
from batchops.identity.api import AdminUser, CurrentUser, ensure_self_or_admin


async def service_caller(
    rt: Annotated[Runtime, Depends(get_runtime)],
    token: Annotated[str | None, Security(service_token_scheme)],
) -> None:
    check_service_token(token, rt.settings.service_token)


Service = Annotated[BillingService, Depends(service_of(BillingService))]

internal = APIRouter(
    prefix="/api/internal",
    tags=["billing (internal)"],
    dependencies=[Depends(service_caller)],
)
public = APIRouter(tags=["billing"])


def balance_out(bal: Balance, currency: str, reason: str | None = None) -> BalanceOut:
    money = (lambda v: v) if currency == CREDITS else cents_to_decimal
    return BalanceOut(
        has_balance=bal.available > 0,
        balance=money(bal.balance),
        held=money(bal.held),
        available=money(bal.available),
        currency=currency,
        reason=reason,
    )


@internal.post("/metering/device-usage", response_model=Envelope[UsageResult])
async def report_usage(body: DeviceUsageIn, service: Service) -> Envelope[UsageResult]:
    """Charge one usage report. Idempotent on ``allocationId``: a repeat is ``duplicate``."""
    [outcome] = await service.report([body])
    if outcome.failure is not None:  # 404 (user) or 409 (another user's allocation), charged nothing
        raise outcome.failure
    cost = None if outcome.cost is None else cents_to_decimal(outcome.cost)
    return ok(
        UsageResult(allocation_id=outcome.allocation_id, status=outcome.status, cost=cost), "💰 Billing data reported"
    )


@internal.post("/metering/device-usage/batch", response_model=Envelope[DeviceUsageBatchOut])
async def report_usage_batch(body: DeviceUsageBatchIn, service: Service) -> Envelope[DeviceUsageBatchOut]:
    """The seed's batch form: ``{success, failed, errors}``, and one result per event in order."""
    outcomes = await service.report(body.events)
    errors = [f"{o.allocation_id}: {o.reason}" for o in outcomes if o.failure is not None]
    success = len(outcomes) - len(errors)
    results = [
        UsageResult(
            allocation_id=o.allocation_id,
            status=o.status,
            cost=None if o.cost is None else cents_to_decimal(o.cost),
            error=None if o.failure is None else o.failure.name,
            reason=o.reason,
        )
        for o in outcomes
    ]
    return ok(
        DeviceUsageBatchOut(success=success, failed=len(errors), errors=errors, results=results),
        f"Batch billing report completed: {success} success, {len(errors)} failed",
    )


@internal.get("/balance/user/{user_id}", response_model=Envelope[BalanceOut])
async def check_balance(user_id: str, service: Service) -> Envelope[BalanceOut]:
    bal, reason = await service.balance(user_id)
    return ok(balance_out(bal, "CNY", reason))


@public.get("/metering/users/{user_id}", response_model=Envelope[UsageHistoryOut])
async def usage_history(
    user_id: str, caller: CurrentUser, service: Service, page: Annotated[PageParams, Depends()]
) -> Envelope[UsageHistoryOut]:
    ensure_self_or_admin(caller, user_id)
    records, count, seconds, cost = await service.usage(user_id, offset=page.offset, limit=page.page_size)
    bal, reason = await service.balance(user_id)
    paged = Page[UsageItem].build(
        [
            UsageItem(
                allocation_id=r.allocation_id,
                device_id=r.device_id,
                duration_seconds=r.duration_seconds,
                cpu_cores=r.cpu_cores,
                memory_mb=r.memory_mb,
                storage_mb=r.storage_mb,
                allocated_at=r.allocated_at,
                released_at=r.released_at,
                cost=cents_to_decimal(r.cost),
                currency=r.currency,
            )
            for r in records
        ],
        page=page.page,
        page_size=page.page_size,
        total=count,
    )
    return ok(
        UsageHistoryOut(
            user_id=user_id,
            **paged.model_dump(),
            totals=UsageTotals(count=count, duration_seconds=seconds, cost=cents_to_decimal(cost)),
            balance=balance_out(bal, "CNY", reason),
        )
    )


@public.post("/admin/billing/topup", response_model=Envelope[TopupOut])
async def topup(body: TopupIn, _: AdminUser, service: Service) -> Envelope[TopupOut]:
    """Add money (CNY, in yuan with two decimals) or whole credits (CREDITS) to a user's account."""
    amount = int(body.amount) if body.currency == CREDITS else decimal_to_cents(body.amount)
    applied, bal = await service.topup(body.user_id, amount, body.currency, body.reference)
    out = balance_out(bal, body.currency)
    return ok(
        TopupOut(
            user_id=body.user_id, currency=body.currency, applied=applied, balance=out.balance, available=out.available
        ),
        "Top-up applied" if applied else "Top-up already applied (same reference)",
    )


@public.get("/admin/billing/dead-letters", response_model=Envelope[Page[DeadLetterOut]])
async def dead_letters(
    _: AdminUser, service: Service, page: Annotated[PageParams, Depends()]
) -> Envelope[Page[DeadLetterOut]]:
    rows, total = await service.dead_letters(offset=page.offset, limit=page.page_size)
    items = [
        DeadLetterOut(
            id=m.id,
            allocation_id=m.payload.get("allocationId"),
            user_id=m.payload.get("userId"),
            attempts=m.attempts,
            last_error=m.last_error,
            created_at=m.created_at,
            payload=m.payload,
        )
        for m in rows
    ]
    return ok(Page[DeadLetterOut].build(items, page=page.page, page_size=page.page_size, total=total))


@public.post("/admin/billing/dead-letters/replay", response_model=Envelope[ReplayOut])
async def replay(_: AdminUser, service: Service) -> Envelope[ReplayOut]:
    requeued, delivered = await service.replay()
    return ok(ReplayOut(requeued=requeued, delivered=delivered), f"{requeued} usage reports requeued")
