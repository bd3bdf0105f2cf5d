"""Billing: balances and top-ups, a user's usage history with totals, dead letters with
replay (one or all), and the reconciliation's unbilled allocations."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from starlette.responses import Response

from batchops.billing.ledger import CREDITS
from batchops.billing.reads import balances_page
from batchops.billing.service import BillingService
from batchops.console.web import Admin, PagingParams, render, runtime
from batchops.core.errors import BadRequestError
from batchops.core.schemas import decimal_to_cents

router = APIRouter()
DEAD_LETTERS_SHOWN = 20


def billing_of(request: Request) -> BillingService:
    service = runtime(request).services.get(BillingService)
    return service


@router.get("/billing")
async def billing(
    request: Request,
    _admin: Admin,
    paging: PagingParams,
    q: Annotated[str | None, Query(max_length=128)] = None,
    currency: Annotated[Literal["CNY", "CREDITS"], Query()] = "CNY",
) -> Response:
    rt = runtime(request)
    service = billing_of(request)
    rows, total = await balances_page(
        rt.db, search=(q or "").strip() or None, currency=currency, offset=paging.offset, limit=paging.size
    )
    dead, dead_total = await service.dead_letters(offset=0, limit=DEAD_LETTERS_SHOWN)
    unbilled = await service.unbilled()
    return render(
        request,
        "billing.html",
        balances=rows,
        total=total,
        paging=paging,
        pages=paging.pages(total),
        q=q or "",
        currency=currency,
        dead=dead,
        dead_total=dead_total,
        unbilled=unbilled,
    )


@router.get("/billing/users/{user_id}")
async def usage(request: Request, user_id: str, _admin: Admin, paging: PagingParams) -> Response:
    service = billing_of(request)
    records, count, seconds, cost = await service.usage(user_id, offset=paging.offset, limit=paging.size)
    balance, reason = await service.balance(user_id)
    credits, _ = await service.balance(user_id, CREDITS)
    return render(
        request,
        "usage.html",
        user_id=user_id,
        records=records,
        count=count,
        seconds=seconds,
        cost=cost,
        balance=balance,
        reason=reason,
        credits=credits,
        paging=paging,
        pages=paging.pages(count),
    )


@router.post("/billing/topup")
async def topup(
    request: Request,
    _admin: Admin,
    user_id: Annotated[str, Form(alias="userId", min_length=1, max_length=128)],
    amount: Annotated[str, Form(max_length=32)],
    currency: Annotated[Literal["CNY", "CREDITS"], Form()] = "CNY",
) -> Response:
    try:
        value = Decimal(amount.strip())
    except InvalidOperation:
        raise BadRequestError("amount must be a number") from None
    if not value.is_finite() or value <= 0 or value > Decimal(10_000_000):
        raise BadRequestError("amount must be greater than 0 and at most 10000000")
    if currency == CREDITS and value != value.to_integral_value():
        raise BadRequestError("CREDITS are whole numbers")
    minor = int(value) if currency == CREDITS else decimal_to_cents(value)
    _applied, balance = await billing_of(request).topup(user_id.strip(), minor, currency, None)
    return render(request, "_topup_result.html", user_id=user_id.strip(), currency=currency, balance=balance)


@router.post("/billing/dead-letters/replay")
async def replay_all(request: Request, _admin: Admin) -> Response:
    requeued, delivered = await billing_of(request).replay()
    return render(request, "_replay_result.html", requeued=requeued, delivered=delivered)


@router.post("/billing/dead-letters/{message_id}/replay")
async def replay_one(request: Request, message_id: Annotated[int, Path(ge=1, le=2**31 - 1)], _admin: Admin) -> Response:
    requeued, delivered = await billing_of(request).replay([message_id])
    return render(request, "_replay_result.html", requeued=requeued, delivered=delivered, one=message_id)
